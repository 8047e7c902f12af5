#!/usr/bin/env bash
# r51: append bytes (test_cuda), append A/B (HEAD vs new), decode L2-prefetch A/B.
set -u
O=$1; mkdir -p $O/x; B=build-gpu-carry
rm -rf $B; mkdir -p $B && tar xJf build-gpu-pack/bins.tar.xz -C $B
{ date -u; git rev-parse HEAD; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; } > $O/device.txt 2>&1
$B/test_cuda --gtest_color=no > $O/x/test.log 2>&1; echo "test rc $?"; tail -3 $O/x/test.log; grep -E 'append:|FAILED' $O/x/test.log | head
for r in 1 2; do
  for v in old new; do
    b=$B/bench_cuda; [[ $v == old ]] && b=$B/old/bench_cuda
    $b --formats tq4 --batch 1 --context 4096 --append > $O/x/append-$v-$r.md 2>&1
    echo "append $v $r: $(grep '^| append' $O/x/append-$v-$r.md | tr -s ' ' | tr '\n' ' ')"
  done
done
for r in 1 2; do
  $B/old/bench_cuda --formats tq4,tq2,k8v4 --json $O/x/dec-old-$r.json > $O/x/dec-old-$r.md 2>&1
  for a in 0 1 2 4; do
    $B/bench_cuda --formats tq4,tq2,k8v4 --l2-ahead $a --json $O/x/dec-a$a-$r.json > $O/x/dec-a$a-$r.md 2>&1
  done
done
tar czf $O/r51.tgz -C $O x
