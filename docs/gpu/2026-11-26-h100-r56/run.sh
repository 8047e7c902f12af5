#!/usr/bin/env bash
# r56: two score chains only at d >= 256 (A/B against HEAD at d = 256, 512), and the decode split count swept at d = 128.
set -u
O=$1; mkdir -p $O/x; B=build-gpu-carry
rm -rf $B; mkdir -p $B && tar xJf build-gpu-pack/bins.tar.xz -C $B
{ date -u; git rev-parse HEAD; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; } > $O/device.txt 2>&1
$B/new/test_cuda --gtest_color=no > $O/x/test.log 2>&1; echo "test rc $?"; tail -1 $O/x/test.log
for r in 1 2; do
  for v in old new; do
    for d in 256 512; do
      $B/$v/bench_cuda --formats tq4,tq3,tq2,k8v4 --head-dim $d --json $O/x/d$d-$v-$r.json > $O/x/d$d-$v-$r.md 2>&1
    done
  done
done
for b in 1 8; do
  for s in auto 2 4 8 16 32 64; do
    opt=""; [[ $s != auto ]] && opt="--splits $s"
    $B/new/bench_cuda --formats tq4 --batch $b --head-dim 128 $opt --json $O/x/split-b$b-$s.json > $O/x/split-b$b-$s.md 2>&1
    echo "b$b splits $s: $(grep '^| tq4' $O/x/split-b$b-$s.md | awk -F'|' '{printf "%s:%s ", $7, $10}')"
  done
done
tar czf $O/r56.tgz -C $O x
