#!/usr/bin/env bash
# r149: tq3 b8 64k graph steps ~180 or ~200 us from run to run (r148): decode_timeline --graph --format tq3 8:65536
# eight times in separate processes, to catch a slow run's timeline; plus the bench row each time.
# Device code of 3189cc1 (r147's binaries). usage: tq3slow149.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
for k in 1 2 3 4 5 6 7 8; do
  $B/decode_timeline --graph --format tq3 8:65536 > /tmp/$R/timeline-$k.md 2>&1
  echo "#$k timeline: $(grep -o '[0-9.]* us per step unmarked' /tmp/$R/timeline-$k.md)"
  $B/bench_cuda --grid issue --formats tq3 --batch 8 --context 65536 --head-dim 128 > /tmp/$R/bench-$k.md 2>&1
  grep -E "^\| tq3 " /tmp/$R/bench-$k.md | awk -F'|' -v k=$k '{printf "#%s bench: single %s graph %s\n", k, $9+0, $10+0}'
done
date -u
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
