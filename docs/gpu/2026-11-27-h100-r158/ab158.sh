#!/usr/bin/env bash
# r158: 93bdb7e with the partials stored from shared memory again (as caf9582): storing them straight from the
# workers' sum spilled 16 B in the tq8/tq8 d = 128 kernel on sm_80 (CI) and gained nothing measurable (r153, r154).
# new (working tree on 7ed1e4d) against 93bdb7e's binary (prev).
# Tests, memcheck/racecheck, issue grid alternated, graph timelines. usage: ab158.sh OUTDIR RUN [N]
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
  F='Cuda.PackedLoGroupsOnBothSidesMatchReference:Cuda.AutoAndForcedSplitsMatchReference:Cuda.FullyMaskedSplitsStayFinite:Cuda.EmptySequenceGivesZeros:Cuda.RingWrapWindowSoftcapSinks:Cuda.AppendStepAndGraphReplayThenDecode:Cuda.CallerWorkspaceIsReusedAcrossCallsAndShapes:Cuda.CallerCodebookMatchesReference:Cuda.PartialWaveTakesMoreSplitsAndMatchesReference'
  for tool in memcheck racecheck synccheck; do
    timeout 240 compute-sanitizer --tool $tool --error-exitcode 3 $B/new/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1
    echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
  done
fi
date -u
for k in $(seq 1 $N); do for bin in prev new; do
  $B/$bin/bench_cuda --grid issue --formats ${FORMATS:-tq4,k8v4,tq3,tq2} > /tmp/$R/ab/$bin-$k.md 2>&1; echo "$bin #$k rc $?"
  grep -E "^\| (tq4|k8v4|tq3|tq2) " /tmp/$R/ab/$bin-$k.md | awk -F'|' '{printf "  %s d%s b%s %s: %s/%s\n", $2, $4+0, $6+0, $7+0, $9+0, $10+0}'
done; date -u; done
for bin in prev new; do
  $B/$bin/decode_timeline --graph 1:4096 8:16384 > /tmp/$R/timeline-graph-$bin.md 2>&1; echo "timeline $bin rc $?"
done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | head -40
