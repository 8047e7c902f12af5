#!/usr/bin/env bash
# r181: tq4 tiles per iteration in a block that has its SM alone (batch 1): 2 (r180, 168 registers) against 3
# (6 stages, 160 registers at d = 128, 469 instructions per tile against 472), and d709df4 (prev).
# Tests and sanitizers of the 3-tile build first, then tq4 batch-1 rows of the three alternated.
# usage: ab181.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-3}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
if [[ ${SKIP_TESTS:-0} == 0 ]]; then
  timeout 300 $B/k3/test_cuda --gtest_color=no > /tmp/$R/test-new.log 2>&1; echo "test new rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test-new.log | head
  F='Cuda.TwoTilesPerIteration*:Cuda.PackedLoGroupsOnBothSidesMatchReference:Cuda.AutoAndForcedSplitsMatchReference:Cuda.FullyMaskedSplitsStayFinite:Cuda.RingWrapWindowSoftcapSinks:Cuda.CallerCodebookMatchesReference'
  for tool in memcheck racecheck; do
    timeout 300 compute-sanitizer --tool $tool --error-exitcode 3 $B/k3/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1
    echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
  done
fi
date -u
for k in $(seq 1 $N); do for bin in prev k2 k3; do
  for d in 128 64; do
    $B/$bin/bench_cuda --grid full --formats tq4 --batch 1 --head-dim $d > /tmp/$R/ab/$bin-d$d-$k.md 2>&1; echo "$bin d$d #$k rc $?"
  done
done; date -u; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | head -60
