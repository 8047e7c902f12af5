#!/usr/bin/env bash
# r113: the append kernel's SM clock and DRAM throughput at the card's own clocks (ncu SpeedOfLight),
# 32k-token tq4 chunk: launches 2-6 f16 input, 9-13 bf16, 16-20 f32 (bench_cuda --append, quick grid).
# usage: appclk.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
nvidia-smi --query-gpu=name,driver_version --format=csv
ncu --clock-control none --section SpeedOfLight -k regex:append_mma_kernel --launch-count 21 $B/bench_cuda --grid quick --append --formats tq4 --batch 1 --context 1024 > /tmp/$R/ncu-append.txt 2>&1
echo "ncu rc $?"
grep -E "append_mma_kernel|SM Frequency|DRAM Throughput|Duration|Compute \(SM\) Throughput" /tmp/$R/ncu-append.txt | awk '/append_mma_kernel/{n++} {print n": "$0}' | grep -v "append_mma_kernel" 
$B/bench_cuda --grid quick --append --formats tq4 --batch 1 --context 1024 2>&1 | tail -4
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
