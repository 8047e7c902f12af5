#!/usr/bin/env bash
# r132: the transposed-score (packed-lo) kernel also at d = 256 (p256: -DTQKV_PACKED_256; tq8 keys excluded:
# two warps per tile there) against the default build of c78156e + the test with d = 256 (new).
# Tests of both, sanitizers on the packed test (p256), d = 256 rows of the full grid alternated.
# usage: d256132.sh OUTDIR RUN [ALTERNATIONS]
set -u
OUT=$1; R=$2; N=${3:-2}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
for v in new p256; do
  timeout 300 $B/$v/test_cuda --gtest_color=no > /tmp/$R/test-$v.log 2>&1; echo "test $v rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test-$v.log | head
done
F='Cuda.PackedLoGroupsOnBothSidesMatchReference:Cuda.EveryBuiltPairAndHeadDimMatchesReference'
for tool in memcheck racecheck; do
  timeout 240 compute-sanitizer --tool $tool --error-exitcode 3 $B/p256/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
done
for k in $(seq 1 $N); do for v in new p256; do for b in 1 8 32; do
  $B/$v/bench_cuda --grid full --head-dim 256 --batch $b --formats tq4,tq3,tq2,k8v4 > /tmp/$R/ab/$v-b$b-$k.md 2>&1; echo "$v-b$b-$k rc $?"
  grep -E "^\| (tq4|k8v4|tq3|tq2) " /tmp/$R/ab/$v-b$b-$k.md | awk -F'|' '$7+0 >= 4096 {printf "  %s d%s %s b%s %s: %s/%s\n", $2, $4+0, $5, $6+0, $7+0, $9+0, $10+0}'
done; done; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
