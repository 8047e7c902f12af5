#!/usr/bin/env bash
# r146: the counter commit lets the next kernel (a decode) launch before its own wait, so the decode's code tables
# overlap the append (the decode step: append_step + decode) — new — against 14bb609's binary (base). Tests of new,
# memcheck/racecheck on the append and split tests, then `bench_cuda --grid issue --formats tq4 --append`
# alternated 3×. usage: step146.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-3}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 300 $B/new/test_cuda --gtest_color=no > /tmp/$R/test-new.log 2>&1; echo "test new rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test-new.log | head
F='Cuda.AppendStepAndGraphReplayThenDecode:Cuda.AppendAwkwardChunksAndUnalignedInputs:Cuda.AppendNonFiniteKeepsRowsAndOverflowIsNotNonFinite:Cuda.AutoAndForcedSplitsMatchReference:Cuda.CallerCodebookMatchesReference'
for tool in memcheck racecheck synccheck; do
  timeout 240 compute-sanitizer --tool $tool --error-exitcode 3 $B/new/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
done
for k in $(seq 1 $N); do for v in base new; do
  $B/$v/bench_cuda --grid issue --formats tq4 --append > /tmp/$R/ab/$v-$k.md 2>&1; echo "$v #$k rc $?"
  grep -A5 "^| decode step" /tmp/$R/ab/$v-$k.md | tail -3
  grep -E "^\| tq4 +\| mma +\| +128 \| 32/8 +\| +(1|8) \| +(4096|16384) " /tmp/$R/ab/$v-$k.md | awk -F'|' '{printf "  b%s %s: %s/%s\n", $6+0, $7+0, $9+0, $10+0}'
done; done
date -u
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
