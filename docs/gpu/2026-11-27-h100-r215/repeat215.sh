#!/usr/bin/env bash
# r215 (probe): r214's shapes that were slowest against r157, measured again 3x with the same binary (b0b0890's
# bench_cuda), to tell run-to-run spread from a regression. usage: repeat215.sh OUTDIR RUN
set -u
OUT=$1; R=$2
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry/bench_cuda
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
for k in 1 2 3; do
  $B --grid full --formats k8v4 --head-dim 64 --batch 8 --context 65536 | grep -E "^\| k8v4"
  $B --grid full --formats kf16v4 --head-dim 256 --batch 1 --context 65536 | grep -E "^\| kf16v4"
  $B --grid full --formats tq4 --head-dim 256 --batch 1 --context 1024 | grep -E "^\| tq4"
  $B --grid full --formats tq3,tq4 --head-dim 64 --batch 1 --context 1024 | grep -E "^\| tq"
  $B --grid full --formats tq3,tq4 --head-dim 64 --batch 1 --context 16384 | grep -E "^\| tq"
done
date -u
} > $OUT/run.log 2>&1
tail -3 $OUT/run.log
