#!/usr/bin/env bash
# r121: the append stages its codebooks with every load issued before the stores (new) against r120's binary (base: the
# commit as a programmatic dependent, staging as load-then-store loops): tests, sanitizers on the append tests,
# bench_cuda --append (32k chunk and the decode step: append_step + decode) alternated 3x.
# r122 (pdl122.sh), r125 (sides125.sh) and r126 (fold126.sh) ran this script under their own names, differing only
# in these header lines; "base" and "new" were the binaries their rows in docs/gpu/README.md name.
# usage: staging121.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
$B/new/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "test rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test.log | head
F='Cuda.*Append*:Cuda.EmptySequenceGivesZeros:Cuda.CallerWorkspaceIsReusedAcrossCallsAndShapes'
for tool in memcheck racecheck synccheck; do
  timeout 200 compute-sanitizer --tool $tool --error-exitcode 3 $B/new/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
done
for k in 1 2 3; do for v in base new; do
  $B/$v/bench_cuda --grid quick --formats tq4 --append > /tmp/$R/ab/$v-$k.md 2>&1; echo "$v-$k rc $?"
  grep -E "^\| (append|tq4 ) " /tmp/$R/ab/$v-$k.md | grep -E "append|\| +[0-9]+ \| +[0-9]+ \|" | cut -c1-120
done; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
