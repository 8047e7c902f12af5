#!/usr/bin/env bash
# r140: decode_timeline --graph (new: each step of a 4-step graph replay with its own timeline) at HEAD b61f0eb's
# device code, and the tq4 issue grid for reference. usage: tl140.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
$B/decode_timeline --graph 1:4096 1:65536 8:16384 8:65536 32:16384 > /tmp/$R/timeline-graph.md 2>&1; echo "graph timeline rc $?"
$B/decode_timeline 1:4096 8:16384 > /tmp/$R/timeline-single.md 2>&1; echo "single timeline rc $?"
$B/bench_cuda --grid issue --formats tq4 > /tmp/$R/bench-tq4.md 2>&1; echo "bench rc $?"
date -u
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log; cat /tmp/$R/timeline-graph.md
