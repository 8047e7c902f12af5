#!/usr/bin/env bash
# Review check: tests, sanitizers on the 11-test filter of gpu-check.sh, then b2e6581's bench (old/) and the review build alternated 2x (tq4 b1 4k rows + append). usage: review.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
F=$(grep "^SANITIZE_FILTER=" scripts/gpu-check.sh | cut -d"'" -f2)
{
date -u; nvidia-smi --query-gpu=name,driver_version --format=csv
$B/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "tests rc $?"; tail -1 /tmp/$R/test.log; grep -E "^append|FAILED" /tmp/$R/test.log
for tool in memcheck racecheck; do timeout 280 compute-sanitizer --tool $tool --error-exitcode 3 $B/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1; echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | tail -2; done
for k in 1 2; do for v in old new; do bin=$B/bench_cuda; [[ $v == old ]] && bin=$B/old/bench_cuda
  $bin --grid issue --formats tq4 --batch 1 --context 4096 --append > /tmp/$R/$v-$k.md 2>&1; echo "$v-$k rc $?"; grep -E "^\| (append tq4|tq4 )" /tmp/$R/$v-$k.md | cut -c1-120; done; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
