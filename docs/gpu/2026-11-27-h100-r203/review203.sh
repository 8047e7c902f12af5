#!/usr/bin/env bash
# r203: the review commit's test binary (workspace_bytes helper in the two split-count tests): the
# whole test_cuda, then memcheck on the two changed tests. usage: review203.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 300 $B/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "test rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]|NOTE" /tmp/$R/test.log | head
timeout 300 compute-sanitizer --tool memcheck --error-exitcode 3 $B/test_cuda --gtest_color=no --gtest_filter='Cuda.PartialWaveTakesMoreSplitsAndMatchesReference:Cuda.BatchEightTakesLonePairsAtOneBlockPerSm' > /tmp/$R/memcheck.log 2>&1
echo "memcheck rc $?"; grep -E "ERROR SUMMARY|PASSED|FAILED" /tmp/$R/memcheck.log | head -3
} > /tmp/$R/run.log 2>&1
cp /tmp/$R/run.log $OUT/$R/
cat /tmp/$R/run.log
