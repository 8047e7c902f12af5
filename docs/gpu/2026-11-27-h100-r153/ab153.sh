#!/usr/bin/env bash
# r153: r152's leaner fixed chain (query and signs copied first, up to d = 128 only; the split merge in one
# L2 round trip for <= 32 splits; sign words ahead) plus the partials stored straight from the workers' sum (no
# shared-memory copy, one barrier fewer). new (working tree on caf9582) against caf9582's binary (base).
# Tests, memcheck/racecheck, issue grid alternated, graph timelines. usage: ab152.sh OUTDIR RUN [N]
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
for k in $(seq 1 $N); do for bin in base new; do
  $B/$bin/bench_cuda --grid issue --formats ${FORMATS:-tq4,k8v4,tq3,tq2} > /tmp/$R/ab/$bin-$k.md 2>&1; echo "$bin #$k rc $?"
  grep -E "^\| (tq4|k8v4|tq3|tq2) " /tmp/$R/ab/$bin-$k.md | awk -F'|' '{printf "  %s d%s b%s %s: %s/%s\n", $2, $4+0, $6+0, $7+0, $9+0, $10+0}'
done; date -u; done
for bin in base new; do
  $B/$bin/decode_timeline --graph 1:4096 8:16384 > /tmp/$R/timeline-graph-$bin.md 2>&1; echo "timeline $bin rc $?"
done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | head -40
# The split count at batch 1 with the shorter chain (auto = 16 at d = 128, 8 KV heads).
for k in 1 2; do for sp in 8 16 32; do
  build-gpu-carry/new/bench_cuda --grid issue --formats tq4 --batch 1 --splits $sp > /tmp/$R/splits-$sp-$k.md 2>&1
  echo "splits $sp #$k: $(grep -E '^\| tq4 ' /tmp/$R/splits-$sp-$k.md | awk -F'|' '$4+0==128 {printf "%s:%s/%s ", $7+0, $9+0, $10+0}')"
done; done >> /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
tail -8 /tmp/$R/run.log
