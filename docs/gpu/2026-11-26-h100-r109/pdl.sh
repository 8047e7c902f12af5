#!/usr/bin/env bash
# r109: decode launched as a programmatic dependent (PDL: griddepcontrol.wait before the first dependent read,
# launch_dependents after the loop) against the same binary with TQKV_PDL=0, alternated 2x; tests and sanitizers.
# usage: pdl.sh OUTDIR RUN
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
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|tests ran|PASSED|FAILED" /tmp/$R/$tool.log | head -4
done
for k in 1 2; do for v in off on; do
  if [[ $v == off ]]; then P=0; else P=1; fi
  TQKV_PDL=$P $B/bench_cuda --grid issue --head-dim 128 --formats tq4,k8v4,tq2 > /tmp/$R/ab/$v-$k.md 2>&1; echo "$v-$k rc $?"
done; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
for f in /tmp/$R/ab/*.md; do echo "== $f"; grep -E "^\| (tq4|k8v4|tq2) " $f | awk -F'|' '{printf "%s b%s %s: %s/%s\n", $2, $6+0, $7+0, $9+0, $10+0}'; done
