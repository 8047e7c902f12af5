#!/usr/bin/env bash
# r55: score accumulators split by k-step parity (two mma chains of half the length): tests and A/B against HEAD.
set -u
O=$1; mkdir -p $O/x; B=build-gpu-carry
rm -rf $B; mkdir -p $B && tar xJf build-gpu-pack/bins.tar.xz -C $B
{ date -u; git rev-parse HEAD; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; } > $O/device.txt 2>&1
$B/new/test_cuda --gtest_color=no > $O/x/test.log 2>&1; echo "test rc $?"; tail -1 $O/x/test.log; grep -E 'FAILED' $O/x/test.log | head
for r in 1 2; do
  for v in old new; do
    $B/$v/bench_cuda --formats tq4,tq3,tq2,k8v4,f16 --json $O/x/dec-$v-$r.json > $O/x/dec-$v-$r.md 2>&1; echo "$v $r rc $?"
  done
done
tar czf $O/r55.tgz -C $O x
