#!/usr/bin/env bash
# r180 (K = 2; r181 has K = 3): tile pairs for tq4 at d <= 128 in a block that has its SM alone (4 stages beside the 64 KB
# table, 168 registers at d = 128), taken by grids of at most one block per SM (batch 1), against
# d709df4's bench_cuda. Tests and sanitizers first, then tq4 batch-1 rows alternated.
# usage: ab180.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-3}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
if [[ ${SKIP_TESTS:-0} == 0 ]]; then
  timeout 300 $B/new/test_cuda --gtest_color=no > /tmp/$R/test-new.log 2>&1; echo "test new rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test-new.log | head
  F='Cuda.TwoTilesPerIteration*:Cuda.PackedLoGroupsOnBothSidesMatchReference:Cuda.AutoAndForcedSplitsMatchReference:Cuda.FullyMaskedSplitsStayFinite:Cuda.RingWrapWindowSoftcapSinks:Cuda.CallerCodebookMatchesReference'
  for tool in memcheck racecheck; do
    timeout 300 compute-sanitizer --tool $tool --error-exitcode 3 $B/new/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1
    echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
  done
fi
date -u
for k in $(seq 1 $N); do for bin in prev new; do
  for d in 128 64; do
    $B/$bin/bench_cuda --grid full --formats tq4 --batch 1 --head-dim $d > /tmp/$R/ab/$bin-d$d-$k.md 2>&1; echo "$bin d$d #$k rc $?"
  done
done; date -u; done
$B/new/decode_timeline --graph 1:65536 1:131072 > /tmp/$R/timeline-new.log 2>&1
$B/prev/decode_timeline --graph 1:65536 1:131072 > /tmp/$R/timeline-prev.log 2>&1
grep -E "^batch|^SMs holding" /tmp/$R/timeline-*.log
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | head -60
