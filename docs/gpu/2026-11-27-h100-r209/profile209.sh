#!/usr/bin/env bash
# r209 (probe): ncu of the 32k-token f16 append kernel (tq4, the 4th append launch of bench_cuda --append: f16):
# full section set, per-instruction SASS counters (executed, stall samples) as CSV, stall reasons.
# usage: profile209.sh OUTDIR RUN   (binaries: build-gpu-pack/bins.tar.xz from scripts/gpu-pack.sh)
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
rep=/tmp/$R/ncu-append-f16
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 400 ncu --set full --clock-control none --import-source no -k regex:append_mma_kernel --launch-skip 3 --launch-count 1 -f -o $rep \
  $B/bench_cuda --grid quick --formats tq4 --batch 1 --context 4096 --append > $rep.run.log 2>&1; echo "ncu rc $?"
ncu -i $rep.ncu-rep --page details > $rep.details.txt 2>&1
ncu -i $rep.ncu-rep --page source --csv --print-source sass > $rep.sass.csv 2>&1
grep -E "append_mma_kernel|Duration|Executed Ipc Active|Issue Slots Busy|No Eligible|Achieved Occupancy|Registers Per|Memory Throughput|Executed Instructions  |Shared" $rep.details.txt | head -30
date -u
} > /tmp/$R/run.log 2>&1
rm -f $rep.ncu-rep
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
