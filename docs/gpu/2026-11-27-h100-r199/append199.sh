#!/usr/bin/env bash
# r199 (probe): the 32k-token append's wave. 32768 tokens = 4096 8-token tiles per KV head over 264
# warps (33 blocks of 8): 15.5 tiles per warp. Times 31680 (15 per warp), 32768, 33792 (16) tokens,
# alternated 3x (bench_cuda's TQKV_APPEND_TOKENS, trial), then ncu's per-SM balance of one f16 append.
# usage: append199.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
for k in 1 2 3; do for n in 31680 32768 33792; do
  TQKV_APPEND_TOKENS=$n $B/new/bench_cuda --grid quick --formats tq4 --batch 1 --context 4096 --append > /tmp/$R/ab/n$n-$k.md 2>&1; echo "n$n #$k rc $?"
  grep "^| append" /tmp/$R/ab/n$n-$k.md
done; done
M=sm__cycles_active.avg,sm__cycles_active.max,sm__cycles_active.min,sm__inst_executed.avg,sm__inst_executed.max,sm__inst_executed.min,gpc__cycles_elapsed.max,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active,gpu__time_duration.sum,smsp__cycles_active.avg
for n in 32768 31680; do
TQKV_APPEND_TOKENS=$n timeout 240 ncu --clock-control none -k regex:append_mma_kernel --launch-skip 2 --launch-count 1 --metrics $M $B/new/bench_cuda --grid quick --formats tq4 --batch 1 --context 4096 --append > /tmp/$R/ncu-$n.log 2>&1; echo "ncu $n rc $?"
grep -E "sm__|gpc__|smsp__|gpu__" /tmp/$R/ncu-$n.log
done
date -u
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | tail -40
