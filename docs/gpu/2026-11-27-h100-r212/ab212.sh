#!/usr/bin/env bash
# r212: the tensor-core append (f16/bf16 inputs, Gram norms) fuses the rotation's length-4 butterflies with the
# scaling to z (z = fma(r[j], s, +-r[j + 4] s): 3 instead of 4 instructions per pair of coordinates) (new) against
# 790922d (prev). Tests, memcheck/racecheck/synccheck on the append tests, bench_cuda --append alternated N x.
# usage: ab212.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-4}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 300 $B/new/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "test rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]|boundary ties" /tmp/$R/test.log | head
for tool in memcheck racecheck synccheck; do
  timeout 300 compute-sanitizer --tool $tool --error-exitcode 3 $B/new/test_cuda --gtest_color=no --gtest_filter='Cuda.Append*' > /tmp/$R/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
done
for k in $(seq 1 $N); do for bin in prev new; do
  $B/$bin/bench_cuda --grid quick --formats tq4 --batch 1 --context 4096 --append > /tmp/$R/ab/$bin-$k.md 2>&1; echo "$bin #$k rc $?"
  grep -E "^\| append (tq4|step)|^\| tq4 +\| +[0-9]+ +\| +[0-9]+ +\| +[0-9.]+ +\| +[0-9.]+ +\| +[0-9.]+ +\|$" /tmp/$R/ab/$bin-$k.md
done; date -u; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | grep -v "^| tq4"
