#!/usr/bin/env bash
# r142: the code tables built before griddepcontrol.wait from the levels in global memory (a DeviceKvCache's
# codebook is settled; no prefetch), against HEAD b61f0eb's binary (base). new's switches come from
# TQKV_TRIAL_EARLY (0: the path of a caller's codebook: wait first, then tables).
# Tests (both orders), memcheck/racecheck, issue grid alternated, graph timelines. usage: ab142.sh OUTDIR RUN [N]
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
  TQKV_TRIAL_EARLY=0 timeout 300 $B/new/test_cuda --gtest_color=no > /tmp/$R/test-new-late.log 2>&1; echo "test new (late) rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test-new-late.log | head
  F='Cuda.PackedLoGroupsOnBothSidesMatchReference:Cuda.AutoAndForcedSplitsMatchReference:Cuda.FullyMaskedSplitsStayFinite:Cuda.EmptySequenceGivesZeros:Cuda.RingWrapWindowSoftcapSinks:Cuda.AppendStepAndGraphReplayThenDecode:Cuda.CallerWorkspaceIsReusedAcrossCallsAndShapes:Cuda.CallerCodebookMatchesReference'
  for tool in memcheck racecheck; do
    timeout 240 compute-sanitizer --tool $tool --error-exitcode 3 $B/new/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1
    echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
  done
fi
date -u
for k in $(seq 1 $N); do for v in base:1:0 new:0:0 new:1:0; do
  IFS=: read bin early pf <<< "$v"
  TQKV_TRIAL_EARLY=$early TQKV_TRIAL_PREFETCH=$pf $B/$bin/bench_cuda --grid issue --formats ${FORMATS:-tq4,k8v4,tq3,tq2} > /tmp/$R/ab/$bin-e$early-p$pf-$k.md 2>&1; echo "$bin early$early pf$pf #$k rc $?"
  grep -E "^\| (tq4|k8v4|tq3|tq2) " /tmp/$R/ab/$bin-e$early-p$pf-$k.md | awk -F'|' '{printf "  %s d%s b%s %s: %s/%s\n", $2, $4+0, $6+0, $7+0, $9+0, $10+0}'
done; date -u; done
for v in 0:0 1:0; do
  IFS=: read early pf <<< "$v"
  TQKV_TRIAL_EARLY=$early TQKV_TRIAL_PREFETCH=$pf $B/new/decode_timeline --graph 1:4096 8:16384 > /tmp/$R/timeline-graph-e$early-p$pf.md 2>&1; echo "timeline e$early p$pf rc $?"
done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
head -20 /tmp/$R/run.log
