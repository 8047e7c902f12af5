#!/usr/bin/env bash
# r205: the append's token counters advanced inside the append kernel (r204's new = fold1: every warp's
# lane 0 counts in and waits for its atomic before staging; new: the atomic is issued after the first
# loads and waited for after the codebooks are staged) against HEAD's append with its second kernel
# (prev: HEAD's append.cu, everything else new). All three bench
# binaries time the append queued behind a wait (the GPU's time) and from an idle stream (with the
# host's launch latency, as before). Tests, memcheck/racecheck/synccheck on the append tests, bench_cuda
# --append alternated N x, then ncu's duration of one f16 append kernel (new).
# usage: ab205.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-4}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 300 $B/new/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "test rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test.log | head
for tool in memcheck racecheck synccheck; do
  timeout 300 compute-sanitizer --tool $tool --error-exitcode 3 $B/new/test_cuda --gtest_color=no --gtest_filter='Cuda.Append*' > /tmp/$R/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
done
for k in $(seq 1 $N); do for bin in prev fold1 new; do
  $B/$bin/bench_cuda --grid quick --formats tq4 --batch 1 --context 4096 --append > /tmp/$R/ab/$bin-$k.md 2>&1; echo "$bin #$k rc $?"
  grep -E "^\| append (tq4|step)|^\| tq4 +\| +[0-9]+ +\| +[0-9]+ +\| +[0-9.]+ +\| +[0-9.]+ +\| +[0-9.]+ +\|$" /tmp/$R/ab/$bin-$k.md
done; date -u; done
timeout 200 ncu --clock-control none -k regex:append_mma_kernel --launch-skip 4 --launch-count 2 --metrics gpu__time_duration.sum $B/new/bench_cuda --grid quick --formats tq4 --batch 1 --context 4096 --append > /tmp/$R/ncu.log 2>&1; echo "ncu rc $?"
grep -E "append_mma_kernel|gpu__time" /tmp/$R/ncu.log | head -8
date -u
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | tail -60
