#!/usr/bin/env bash
# r133: the split merge's first batch of partial rows loaded with the splits' (m, d) (one L2 round trip, not
# two), and each block's partial stored straight from the workers' sum (no shared-memory round trip and barrier)
# (new) against 5d9d5bd (base). Tests, sanitizers on the split tests, timeline (warm) and the issue grid alternated.
# usage: merge133.sh OUTDIR RUN [ALTERNATIONS]
set -u
OUT=$1; R=$2; N=${3:-3}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 300 $B/new/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "test rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test.log | head
F='Cuda.AutoAndForcedSplitsMatchReference:Cuda.FullyMaskedSplitsStayFinite:Cuda.EmptySequenceGivesZeros:Cuda.CallerWorkspaceIsReusedAcrossCallsAndShapes:Cuda.PackedLoGroupsOnBothSidesMatchReference'
for tool in memcheck racecheck synccheck; do
  timeout 240 compute-sanitizer --tool $tool --error-exitcode 3 $B/new/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
done
for v in base new; do $B/$v/decode_timeline > /tmp/$R/timeline-$v.md 2>&1; echo "timeline $v rc $?"; grep -E "^batch|workers joined|finish start|finish done|split merge done" /tmp/$R/timeline-$v.md | head -12; done
for k in $(seq 1 $N); do for v in base new; do
  $B/$v/bench_cuda --grid issue --formats tq4,k8v4,tq2 > /tmp/$R/ab/$v-$k.md 2>&1; echo "$v-$k rc $?"
  grep -E "^\| (tq4|k8v4|tq2) " /tmp/$R/ab/$v-$k.md | awk -F'|' '{printf "  %s d%s b%s %s: %s/%s\n", $2, $4+0, $6+0, $7+0, $9+0, $10+0}'
done; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
