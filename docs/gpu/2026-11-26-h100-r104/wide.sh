#!/usr/bin/env bash
# r104: tq4 d = 128 decode as one block of 16 warps per SM with 3 (w3) or 4 (w4) copy stages, against HEAD (old).
# usage: wide.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
nvidia-smi --query-gpu=name,driver_version --format=csv
for v in w3 w4; do d=$B; [[ $v == w4 ]] && d=$B/w4
  $d/test_cuda --gtest_color=no > /tmp/$R/test-$v.log 2>&1; echo "test $v rc $?"; tail -1 /tmp/$R/test-$v.log; done
F='Cuda.FullyMaskedSplitsStayFinite:Cuda.AutoAndForcedSplitsMatchReference:Cuda.RingWrapWindowSoftcapSinks:Cuda.EmptySequenceGivesZeros'
timeout 200 compute-sanitizer --tool racecheck --error-exitcode 3 $B/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/racecheck.log 2>&1
echo "racecheck w3 rc $?"; grep -E "RACECHECK SUMMARY" /tmp/$R/racecheck.log
for k in 1 2; do for v in old w3 w4; do bin=$B/bench_cuda; [[ $v == old ]] && bin=$B/old/bench_cuda; [[ $v == w4 ]] && bin=$B/w4/bench_cuda
  $bin --grid issue --head-dim 128 --formats tq4 --json /tmp/$R/ab/$v-$k.json > /tmp/$R/ab/$v-$k.md 2>&1; echo "$v-$k rc $?"; done; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
for f in /tmp/$R/ab/*.md; do echo "== $f"; grep -E "^\| tq4 " $f | awk -F'|' '{printf "%s b%s %s: %s/%s\n", $5, $6+0, $7+0, $9+0, $10+0}'; done
