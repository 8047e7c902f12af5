#!/usr/bin/env bash
# r115: tq2 lookups through a byte-indexed table of 64-bit entries (two fp16 pairs per load):
# tests, sanitizers (the packed-lo and split tests include tq2), and tq2/tq4 times against 7637ea1's binary.
# usage: quad115.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
$B/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "test rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test.log | head
F='Cuda.PackedLoGroupsOnBothSidesMatchReference:Cuda.AutoAndForcedSplitsMatchReference:Cuda.FullyMaskedSplitsStayFinite:Cuda.EmptySequenceGivesZeros'
for tool in memcheck racecheck synccheck; do
  timeout 200 compute-sanitizer --tool $tool --error-exitcode 3 $B/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
done
for k in 1 2 3; do for v in old new; do bin=$B/bench_cuda; [[ $v == old ]] && bin=$B/old/bench_cuda
  $bin --grid issue --formats tq2,tq4 > /tmp/$R/ab/$v-$k.md 2>&1; echo "$v-$k rc $?"
  grep -E "^\| (tq4|tq2) " /tmp/$R/ab/$v-$k.md | awk -F'|' '{printf "  %s d%s b%s %s: %s/%s\n", $2, $4+0, $6+0, $7+0, $9+0, $10+0}'
done; done
for v in old new; do bin=$B/bench_cuda; [[ $v == old ]] && bin=$B/old/bench_cuda
  for b in 1 8; do $bin --grid full --formats tq2 --batch $b > /tmp/$R/ab/full-$v-b$b.md 2>&1; echo "full $v b$b rc $?"; done
done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
