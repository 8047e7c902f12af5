#!/usr/bin/env bash
# r188: tq4's lone tile pairs share each sequence's last positions (a pool claimed in units of two
# tiles, trial: TQKV_TAIL_EIGHTHS = eighths streamed by their own split; 0 = no pool) against
# r187's bench_cuda (d0cb8ea). Tests and sanitizers first, then batch-1 tq4 rows alternated 3x,
# then graph timelines at 64k. usage: ab188.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-3}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 300 $B/new/test_cuda --gtest_color=no > /tmp/$R/test-new.log 2>&1; echo "test new rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test-new.log | head
F='Cuda.LoneTilePairsShareTheLastPositions:Cuda.TwoTilesPerIteration*'
for tool in memcheck racecheck synccheck; do
  timeout 300 compute-sanitizer --tool $tool --error-exitcode 3 $B/new/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
done
date -u
for k in $(seq 1 $N); do for v in prev t7 t6 t0; do
  bin=new; [ $v = prev ] && bin=prev
  for d in 128 64; do
    TQKV_TAIL_EIGHTHS=${v#t} $B/$bin/bench_cuda --grid full --formats tq4 --batch 1 --head-dim $d > /tmp/$R/ab/$v-d$d-$k.md 2>&1; echo "$v d$d #$k rc $?"
  done
done; date -u; done
for v in 7 0; do
  TQKV_TAIL_EIGHTHS=$v $B/new/decode_timeline --graph --raw 1:65536 1:131072 > /tmp/$R/tl-t$v.log 2>&1; echo "timeline t$v rc $?"
  grep -E "^batch" /tmp/$R/tl-t$v.log
done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | head -60
