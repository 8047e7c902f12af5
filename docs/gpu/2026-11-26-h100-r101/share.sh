#!/usr/bin/env bash
# r101: tile sharing (TQKV_SHARE=chunk,helpers,min_chunks), tests forced on, sanitizers, then A/B at batch 8/32.
# usage: share.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
nvidia-smi --query-gpu=name,driver_version --format=csv
echo "== tests, default"; $B/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "test rc $?"; tail -3 /tmp/$R/test.log
echo "== tests, TQKV_SHARE=1,3,1"; TQKV_SHARE=1,3,1 $B/test_cuda --gtest_color=no > /tmp/$R/test-share.log 2>&1; echo "test rc $?"; tail -3 /tmp/$R/test-share.log
grep -E "FAILED|Failure" /tmp/$R/test-share.log | head -20
F='Cuda.FullyMaskedSplitsStayFinite:Cuda.AutoAndForcedSplitsMatchReference:Cuda.RingWrapWindowSoftcapSinks:Cuda.EmptySequenceGivesZeros'
for tool in memcheck racecheck; do
  TQKV_SHARE=1,3,1 timeout 200 compute-sanitizer --tool $tool --error-exitcode 3 $B/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY" /tmp/$R/$tool.log
done
for k in 1 2; do for v in off 4,3,8 2,3,8 8,3,4; do
  TQKV_SHARE=$v $B/bench_cuda --grid issue --batch 8 --head-dim 128 --formats tq4,k8v4,tq3,tq2 --json /tmp/$R/ab/b8-$v-$k.json > /tmp/$R/ab/b8-$v-$k.md 2>&1; echo "b8 $v-$k rc $?"
  TQKV_SHARE=$v $B/bench_cuda --grid issue --batch 32 --head-dim 128 --formats tq4 --json /tmp/$R/ab/b32-$v-$k.json > /tmp/$R/ab/b32-$v-$k.md 2>&1; echo "b32 $v-$k rc $?"
done; done
$B/decode_timeline 8:16384 8:65536 > /tmp/$R/ab/timeline-off.md 2>&1
TQKV_SHARE=4,3,8 $B/decode_timeline 8:16384 8:65536 > /tmp/$R/ab/timeline-share.md 2>&1
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
for f in /tmp/$R/ab/b*-1.md /tmp/$R/ab/b*-2.md; do echo "== $f"; grep -E "^\| (tq4|k8v4|tq3|tq2) \| mma" $f | cut -d'|' -f2,4,5,7,8,10,12 ; done
grep -E "^\| (loop start|loop end|finish done|split merge done)|event time|^batch" /tmp/$R/ab/timeline-*.md
