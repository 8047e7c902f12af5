#!/usr/bin/env bash
# r94: tests, sanitizers on the split tests, then old (HEAD) vs new decode (issue grid) alternated, and both timelines.
# usage: cluster.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
nvidia-smi --query-gpu=name,driver_version --format=csv
echo "== tests"; $B/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "test rc $?"; grep -E "FAILED|PASSED|OK \]" /tmp/$R/test.log | tail -25
F='Cuda.FullyMaskedSplitsStayFinite:Cuda.AutoAndForcedSplitsMatchReference:Cuda.CallerWorkspaceIsReusedAcrossCallsAndShapes:Cuda.RingWrapWindowSoftcapSinks:Cuda.EmptySequenceGivesZeros:Cuda.OutputTypesScaleAndLargeGroups'
for tool in memcheck racecheck synccheck; do
  timeout 240 compute-sanitizer --tool $tool --error-exitcode 3 $B/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log
done
for k in 1 2; do for v in old new; do bin=$B/bench_cuda; [[ $v == old ]] && bin=$B/old/bench_cuda
  $bin --grid issue --json /tmp/$R/ab/$v-$k.json > /tmp/$R/ab/$v-$k.md 2>&1; echo "$v-$k rc $?"; done; done
$B/old/decode_timeline 1:4096 1:65536 8:16384 8:65536 > /tmp/$R/ab/timeline-old.md 2>&1; $B/decode_timeline 1:4096 1:65536 8:16384 8:65536 > /tmp/$R/ab/timeline-new.md 2>&1
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
for v in old-1 new-1 old-2 new-2; do echo "== $v"; grep -E "^\| (tq4|k8v4|tq3|tq2|f16) +\| mma" /tmp/$R/ab/$v.md | awk -F'|' '{printf "%s d%s b%s %s: %s\n",$2,$4,$6,$7,$10}' | tr -s ' ' | paste -sd';' ; done
grep -E "^\| (loop end|workers joined|finish start|finish done|split merge done|SMs with)|event time|^batch" /tmp/$R/ab/timeline-*.md
