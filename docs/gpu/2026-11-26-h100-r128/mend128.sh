#!/usr/bin/env bash
# r128: the review mend (stage_codebooks counts each side's codes once; the append test asks for the two-warp limit
# once): test_cuda, sanitizers on the append tests, the append rows of bench_cuda. usage: mend128.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
$B/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "test rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]|append \(tensor cores\)" /tmp/$R/test.log | head
F='Cuda.*Append*:Cuda.EmptySequenceGivesZeros:Cuda.CallerWorkspaceIsReusedAcrossCallsAndShapes'
for tool in memcheck racecheck synccheck; do
  timeout 200 compute-sanitizer --tool $tool --error-exitcode 3 $B/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
done
$B/bench_cuda --grid quick --formats tq4 --append > /tmp/$R/bench.md 2>&1; echo "bench rc $?"
grep -E "^\| append tq4|^\| tq4 +\| +[0-9]+ \|" /tmp/$R/bench.md
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
