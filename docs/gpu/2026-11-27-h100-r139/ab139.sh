#!/usr/bin/env bash
# r139: L2 prefetch of each split's first positions before griddepcontrol.wait (a programmatic launch pulls
# them while the previous kernel finishes) against HEAD b61f0eb's binary (base). new's prefetch count comes
# from TQKV_TRIAL_PREFETCH (0: off; default 256). Tests and memcheck of new (prefetch 256), then the issue
# grid alternated. usage: ab139.sh OUTDIR RUN [ALTERNATIONS]
set -u
OUT=$1; R=$2; N=${3:-2}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
if [[ ${SKIP_TESTS:-0} == 0 ]]; then
  timeout 300 $B/new/test_cuda --gtest_color=no > /tmp/$R/test-new.log 2>&1; echo "test new rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test-new.log | head
  F='Cuda.PackedLoGroupsOnBothSidesMatchReference:Cuda.AutoAndForcedSplitsMatchReference:Cuda.FullyMaskedSplitsStayFinite:Cuda.EmptySequenceGivesZeros:Cuda.RingWrapWindowSoftcapSinks:Cuda.AppendStepAndGraphReplayThenDecode'
  timeout 240 compute-sanitizer --tool memcheck --error-exitcode 3 $B/new/test_cuda --gtest_color=no --gtest_filter="$F" > /tmp/$R/memcheck.log 2>&1
  echo "memcheck rc $?"; grep -E "ERROR SUMMARY|PASSED|FAILED" /tmp/$R/memcheck.log | head -3
fi
date -u
for k in $(seq 1 $N); do for v in base:256 new:0 new:256 new:1024; do
  bin=${v%%:*}; pf=${v##*:}
  TQKV_TRIAL_PREFETCH=$pf $B/$bin/bench_cuda --grid issue --formats ${FORMATS:-tq4,k8v4,tq3,tq2} > /tmp/$R/ab/$bin-$pf-$k.md 2>&1; echo "$bin pf$pf #$k rc $?"
  grep -E "^\| (tq4|k8v4|tq3|tq2) " /tmp/$R/ab/$bin-$pf-$k.md | awk -F'|' '{printf "  %s d%s b%s %s: %s/%s\n", $2, $4+0, $6+0, $7+0, $9+0, $10+0}'
done; date -u; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
