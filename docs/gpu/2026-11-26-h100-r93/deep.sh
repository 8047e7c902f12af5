#!/usr/bin/env bash
# r93: tests, sanitizers on the split tests, then old (HEAD) vs new decode at batch 1 alternated, and both timelines.
# usage: deep.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
nvidia-smi --query-gpu=name,driver_version --format=csv
echo "== tests"; $B/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "test rc $?"; tail -3 /tmp/$R/test.log
F='Cuda.FullyMaskedSplitsStayFinite:Cuda.AutoAndForcedSplitsMatchReference:Cuda.RingWrapWindowSoftcapSinks:Cuda.EmptySequenceGivesZeros'
for tool in memcheck racecheck; do
  timeout 200 compute-sanitizer --tool $tool --error-exitcode 3 $B/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY" /tmp/$R/$tool.log
done
for k in 1 2; do for v in old new; do bin=$B/bench_cuda; [[ $v == old ]] && bin=$B/old/bench_cuda
  $bin --grid issue --batch 1 --formats tq4,k8v4,tq3,tq2,f16 --json /tmp/$R/ab/$v-$k.json > /tmp/$R/ab/$v-$k.md 2>&1; echo "$v-$k rc $?"; done; done
$B/old/decode_timeline 1:4096 1:65536 > /tmp/$R/ab/timeline-old.md 2>&1; $B/decode_timeline 1:4096 1:65536 > /tmp/$R/ab/timeline-new.md 2>&1
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
for v in old new; do echo "== $v"; grep -E "^\| (tq4|k8v4|tq3|tq2|f16) \| mma" /tmp/$R/ab/$v-1.md /tmp/$R/ab/$v-2.md | cut -d'|' -f2,4,5,7,8,10,12 ; done
grep -E "^\| (loop start|loop end|finish done|split merge done)|event time|^batch" /tmp/$R/ab/timeline-*.md
