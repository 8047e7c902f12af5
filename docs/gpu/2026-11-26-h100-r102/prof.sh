#!/usr/bin/env bash
# r102: ncu of HEAD's decode kernel (tq4 b8 64k and 16k, tq2 b8 64k): what bounds the bulk at batch 8.
# usage: prof.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
{
nvidia-smi --query-gpu=name,driver_version --format=csv
bash scripts/gpu-profile.sh /tmp/$R/b8-64k build-gpu-carry tq4,tq2 8 65536 128
bash scripts/gpu-profile.sh /tmp/$R/b8-16k build-gpu-carry tq4 8 16384 128
for f in /tmp/$R/*/*.details.txt; do echo "== $f"
  grep -E "^ +(Duration|DRAM Throughput|Memory Throughput|L2 Cache Throughput|Compute \(SM\) Throughput|Executed Ipc Active|Issue Slots Busy|No Eligible|Active Warps Per Scheduler|Eligible Warps Per Scheduler|Achieved Occupancy|Registers Per Thread|Executed Instructions|SM Frequency|DRAM Frequency|Warp Cycles Per Issued Instruction|Mem Busy|Max Bandwidth|Mem Pipes Busy) " $f
done
} > /tmp/$R/run.log 2>&1
cd /tmp && tar czf $OUT/$R/$R.tgz --exclude='*.ncu-rep' $R
cat /tmp/$R/run.log
