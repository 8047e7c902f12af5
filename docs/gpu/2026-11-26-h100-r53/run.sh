#!/usr/bin/env bash
# r53: persistent pipelined append (2 blocks per SM; 2 or 3 stages): bytes (test_cuda) and A/B against HEAD
set -u
O=$1; mkdir -p $O/x; B=build-gpu-carry
rm -rf $B; mkdir -p $B && tar xJf build-gpu-pack/bins.tar.xz -C $B
{ date -u; git rev-parse HEAD; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; } > $O/device.txt 2>&1
for v in B2 B3; do
  $B/$v/test_cuda --gtest_color=no > $O/x/test-$v.log 2>&1; echo "test $v rc $?"; tail -1 $O/x/test-$v.log; grep -E 'append:|FAILED' $O/x/test-$v.log | head
done
for r in 1 2 3; do
  for v in old B2 B3; do
    $B/$v/bench_cuda --formats tq4 --batch 1 --context 4096 --append > $O/x/append-$v-$r.md 2>&1
    echo "append $v $r: $(grep '^| append tq4' $O/x/append-$v-$r.md | tr -s ' ' | cut -d'|' -f3,5,7 | tr '\n' ' ')"
  done
done
compute-sanitizer --tool memcheck --error-exitcode 3 $B/B2/test_cuda --gtest_color=no --gtest_filter='*Append*' > $O/x/memcheck-B2.log 2>&1; echo "memcheck B2 rc $?"; grep -E 'ERROR SUMMARY' $O/x/memcheck-B2.log
compute-sanitizer --tool racecheck --error-exitcode 3 $B/B2/test_cuda --gtest_color=no --gtest_filter='*Append*' > $O/x/racecheck-B2.log 2>&1; echo "racecheck B2 rc $?"; grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' $O/x/racecheck-B2.log
tar czf $O/r53.tgz -C $O x
