#!/usr/bin/env bash
# r217 (trial, second form of r216): as r216, but the real token count's load goes out right after
# griddepcontrol.wait, before the guessed first copies (in r216 it queued behind them: its first use
# came one round trip later). new2 = this form, prev = HEAD 81856ba. Tests, memcheck/racecheck on
# decode tests, then the issue grid (tq4, tq3, tq2) and the append_step + decode rows, alternated N x.
# usage: ab217.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-3}
D=$OUT/$R; mkdir -p $D/ab
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
F='Cuda.AwkwardLengthsAndBatch17:Cuda.RingWrapWindowSoftcapSinks:Cuda.AutoAndForcedSplitsMatchReference:Cuda.BatchEightTakesLonePairsAtOneBlockPerSm:Cuda.AppendStepAndGraphReplayThenDecode:Cuda.TwoTilesPerIterationIgnoreStaleStages'
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
for bin in new2; do
  timeout 300 $B/$bin/test_cuda --gtest_color=no > $D/test-$bin.log 2>&1; echo "test $bin rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" $D/test-$bin.log | head
  for tool in memcheck racecheck; do
    timeout 300 compute-sanitizer --tool $tool --error-exitcode 3 $B/$bin/test_cuda --gtest_color=no --gtest_filter="$F" > $D/$tool-$bin.log 2>&1
    echo "$tool $bin rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" $D/$tool-$bin.log | head -3
  done
done
date -u
for k in $(seq 1 $N); do for bin in prev new2; do
  $B/$bin/bench_cuda --grid issue --formats tq4,tq3,tq2 > $D/ab/$bin-issue-$k.md 2>&1; echo "$bin issue #$k rc $?"
  $B/$bin/bench_cuda --grid quick --formats tq4 --batch 1 --context 4096 --append > $D/ab/$bin-append-$k.md 2>&1; echo "$bin append #$k rc $?"
  grep -E "^\| tq4 +\| +[0-9]+ +\| +[0-9]+ +\| +[0-9.]+ +\| +[0-9.]+ +\| +[0-9.]+ +\|$" $D/ab/$bin-append-$k.md
done; date -u; done
} > $D/run.log 2>&1
tar czf $OUT/$R-ab.tgz -C $D ab && rm -rf $D/ab
cat $D/run.log
