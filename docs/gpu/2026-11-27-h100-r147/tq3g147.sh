#!/usr/bin/env bash
# r147: why tq3's graph steps at b8 64k run over its single launches (r144: 199.7 against 183.2 µs): graph
# timelines (decode_timeline --graph --format, new) of tq3 and tq4 at 8:65536, and their bench rows, twice.
# Device code of 3189cc1. usage: tq3g147.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
for k in 1 2; do for f in tq3 tq4; do
  $B/bench_cuda --grid issue --formats $f --batch 8 --context 65536 --head-dim 128 > /tmp/$R/bench-$f-$k.md 2>&1
  grep -E "^\| $f " /tmp/$R/bench-$f-$k.md | awk -F'|' '{printf "%s b%s %s: single %s graph %s\n", $2, $6+0, $7+0, $9+0, $10+0}'
  $B/decode_timeline --graph --format $f 8:65536 > /tmp/$R/timeline-$f-$k.md 2>&1; echo "timeline $f #$k rc $?"
  grep "graph of" /tmp/$R/timeline-$f-$k.md
done; done
date -u
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
