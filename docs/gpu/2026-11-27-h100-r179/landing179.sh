#!/usr/bin/env bash
# r179: where a graph step's blocks land (decode_timeline --graph, SMs holding n blocks of each
# step): tq3 b1 128k with 16 splits (r178: graph 72.6-80.2 us against 56-60 single) and with the
# automatic 33; b1 64k with 16; tq3 and tq4 b8 64k (tq3's graph spread, v14-v18). usage: OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry/new
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
for k in 1 2; do
  $B/decode_timeline --graph --format tq3 --splits 16 1:131072 1:65536
  $B/decode_timeline --graph --format tq3 1:131072
  $B/decode_timeline --graph --format tq3 8:65536
  $B/decode_timeline --graph --format tq4 8:65536 1:65536
done
date -u
} > /tmp/$R/run.log 2>&1
cp /tmp/$R/run.log $OUT/$R/
grep -E "^batch|^SMs holding|^step" /tmp/$R/run.log | head -120
