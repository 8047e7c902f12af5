#!/usr/bin/env bash
# r112: the programmatic launch decided per kernel from its code (ptxVersion >= 90) instead of the device's
# compute capability; tests, sanitizers, and batch-1/8 times against bb8653a's binary (no programmatic launch), 2x.
# r114 ran this script as review114.sh (only these header lines differed), against the same old binary.
# usage: pdl2.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
nvidia-smi --query-gpu=name,driver_version --format=csv
$B/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "test rc $?"; tail -1 /tmp/$R/test.log
F='Cuda.FullyMaskedSplitsStayFinite:Cuda.AutoAndForcedSplitsMatchReference:Cuda.RingWrapWindowSoftcapSinks:Cuda.EmptySequenceGivesZeros:Cuda.*Workspace*:Cuda.*Append*'
for tool in memcheck racecheck synccheck; do
  timeout 240 compute-sanitizer --tool $tool --error-exitcode 3 $B/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
done
for k in 1 2; do for v in old new; do bin=$B/bench_cuda; [[ $v == old ]] && bin=$B/old/bench_cuda
  $bin --grid issue --head-dim 128 --formats tq4,tq2 > /tmp/$R/ab/$v-$k.md 2>&1; echo "$v-$k rc $?"
  grep -E "^\| (tq4|tq2) " /tmp/$R/ab/$v-$k.md | awk -F'|' '$6+0<=8 {printf "  %s b%s %s: %s/%s\n", $2, $6+0, $7+0, $9+0, $10+0}'
done; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
