#!/usr/bin/env bash
# r206: the append's token counters advanced inside the append kernel with two-level counts (new2: every
# warp counts in at its (sequence, KV head)'s count, the last of a head at the sequence's; r205's one count
# per sequence put 2,112 atomics on one address) and the same with the next kernel's launch allowed only
# after the counts (late: griddepcontrol.launch_dependents after the codebooks are staged instead of at
# the start), against HEAD's append with its second kernel (prev). Tests and memcheck/racecheck/synccheck
# on the append tests (new2), bench_cuda --append alternated N x.
# usage: ab206.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-4}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 300 $B/new2/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "test rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test.log | head
for tool in memcheck racecheck synccheck; do
  timeout 300 compute-sanitizer --tool $tool --error-exitcode 3 $B/new2/test_cuda --gtest_color=no --gtest_filter='Cuda.Append*' > /tmp/$R/$tool.log 2>&1
  echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | head -3
done
for k in $(seq 1 $N); do for bin in prev new2 late; do
  $B/$bin/bench_cuda --grid quick --formats tq4 --batch 1 --context 4096 --append > /tmp/$R/ab/$bin-$k.md 2>&1; echo "$bin #$k rc $?"
  grep -E "^\| append (tq4|step)|^\| tq4 +\| +[0-9]+ +\| +[0-9]+ +\| +[0-9.]+ +\| +[0-9.]+ +\| +[0-9.]+ +\|$" /tmp/$R/ab/$bin-$k.md
done; date -u; done
date -u
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | tail -60
