#!/usr/bin/env bash
# r226 (trial): grids of tile pairs at one block per SM (each block has its SM alone) let the next
# grid launch at their entry (griddepcontrol.launch_dependents first thing) and prefetch the first P
# positions of their split into L2 before griddepcontrol.wait, from the token count read then; the
# trial binary takes TQKV_EARLY=1 and TQKV_PREFETCH=P. Variants in one binary: base (off), e0 (early
# trigger only), e512, e2048 (early trigger + prefetch). test_cuda with the knobs on, memcheck /
# racecheck on decode tests, then the tq4 issue and batch grids alternated N x.
# usage: trial226.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-4}
D=$OUT/$R; mkdir -p $D/ab
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
F='Cuda.StaleTokenCountsBeforeTheWaitAreChecked:Cuda.AwkwardLengthsAndBatch17:Cuda.RingWrapWindowSoftcapSinks:Cuda.TwoTilesPerIterationIgnoreStaleStages:Cuda.BatchEightTakesLonePairsAtOneBlockPerSm'
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
TQKV_EARLY=1 TQKV_PREFETCH=1024 timeout 150 $B/test_cuda --gtest_color=no > $D/test.log 2>&1; echo "test (knobs on) rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]|Failure" $D/test.log | head -20
for tool in memcheck racecheck; do
  TQKV_EARLY=1 TQKV_PREFETCH=1024 timeout 150 compute-sanitizer --tool $tool --error-exitcode 3 $B/test_cuda --gtest_color=no --gtest_filter="$F" > $D/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" $D/$tool.log | head -4
done
date -u
run() { local v=$1 k=$2; shift 2
  env "$@" $B/bench_cuda --grid issue --formats tq4 > $D/ab/$v-issue-$k.md 2>&1; echo "$v issue #$k rc $?"
  env "$@" $B/bench_cuda --grid batches --formats tq4 > $D/ab/$v-batches-$k.md 2>&1; echo "$v batches #$k rc $?"; }
for k in $(seq 1 $N); do
  run base $k TQKV_EARLY=0
  run e0 $k TQKV_EARLY=1
  run e512 $k TQKV_EARLY=1 TQKV_PREFETCH=512
  run e2048 $k TQKV_EARLY=1 TQKV_PREFETCH=2048
  date -u
done
} > $D/run.log 2>&1
tar czf $OUT/$R-ab.tgz -C $D ab && rm -rf $D/ab
cat $D/run.log
