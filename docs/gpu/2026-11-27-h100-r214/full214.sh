#!/usr/bin/env bash
# r214: the whole issue grid (bench_cuda --grid full: d 64-512, four head layouts, batch 1-128, context 1k-128k)
# with the PyTorch SDPA peer, the final code of the nineteenth session (b0b0890's bench_cuda; decode kernels as
# r202). Writes straight under OUTDIR so that a cut-off run keeps what it measured. usage: full214.sh OUTDIR RUN
set -u
OUT=$1; R=$2
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv; } > $OUT/device.txt
GRID=full timeout 560 bash scripts/gpu-bench/run.sh $OUT/$R build-gpu-carry > $OUT/run.log 2>&1
echo "run.sh rc $?" >> $OUT/run.log
tail -5 $OUT/run.log
