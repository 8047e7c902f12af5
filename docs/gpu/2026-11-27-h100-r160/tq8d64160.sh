#!/usr/bin/env bash
# r160: r157's one doubtful row set: tq8/tq8 at d = 64, batch 1 (all head layouts, 1k-128k), caf9582's binary (base)
# against a8b29c9's (new; its sm_90a decode SASS is 93bdb7e's, which r157 ran), alternated 3x. usage: tq8d64160.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R/ab $OUT/$R /tmp/b160
tar xJf build-gpu-pack/bins.tar.xz -C /tmp/b160
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv; } > /tmp/$R/device.txt
for k in 1 2 3; do for bin in base new; do
  /tmp/b160/$bin/bench_cuda --grid full --formats tq8 --head-dim 64 --batch 1 > /tmp/$R/ab/$bin-$k.md 2>&1; echo "$bin #$k rc $?"
done; done
tar czf $OUT/$R/$R.tgz -C /tmp $R
