#!/usr/bin/env bash
# The whole grid with the carried binaries (bench_cuda + the SDPA peer). usage: full99.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
GRID=full bash scripts/gpu-bench/run.sh /tmp/$R/full build-gpu-carry > /tmp/$R/run.log 2>&1
echo "run.sh rc $?" >> /tmp/$R/run.log
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
