#!/usr/bin/env bash
# r129: transposed score mma for groups of <= 4 heads (PACKED_LO kernels: keys as A, the query's hi/lo
# columns as B; one mma per k step for 16 positions) against HEAD dd1cdb1's binary (base). new: the default
# build (tq2/tq3 keys at d <= 128 take it); all: every quantized key format at d <= 128 (TQKV_PACKED_ALL).
# Tests of both, sanitizers on the packed tests (all), issue-grid times alternated.
# usage: trans129.sh OUTDIR RUN [ALTERNATIONS]
set -u
OUT=$1; R=$2; N=${3:-1}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
if [[ ${SKIP_TESTS:-0} == 0 ]]; then
for v in new all; do
  timeout 300 $B/$v/test_cuda --gtest_color=no > /tmp/$R/test-$v.log 2>&1; echo "test $v rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test-$v.log | head
done
F='Cuda.PackedLoGroupsOnBothSidesMatchReference:Cuda.AutoAndForcedSplitsMatchReference:Cuda.FullyMaskedSplitsStayFinite:Cuda.EmptySequenceGivesZeros:Cuda.RingWrapWindowSoftcapSinks'
for tool in memcheck racecheck; do
  timeout 240 compute-sanitizer --tool $tool --error-exitcode 3 $B/all/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
done
fi
for k in $(seq 1 $N); do for v in base new all; do
  $B/$v/bench_cuda --grid issue --formats tq4,k8v4,tq3,tq2 > /tmp/$R/ab/$v-$k.md 2>&1; echo "$v-$k rc $?"
  grep -E "^\| (tq4|k8v4|tq3|tq2) " /tmp/$R/ab/$v-$k.md | awk -F'|' '{printf "  %s d%s b%s %s: %s/%s\n", $2, $4+0, $6+0, $7+0, $9+0, $10+0}'
done; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
