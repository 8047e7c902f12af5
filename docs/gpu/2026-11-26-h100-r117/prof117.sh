#!/usr/bin/env bash
# r117: 916ca04 — ncu at the card's own clocks of tq2 and tq3 at b8 64k (stall reasons), and the
# skeleton floors with tq2/tq3 bytes at batch 8.
# usage: prof117.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
mv build-gpu-carry/base/bench_cuda build-gpu-carry/bench_cuda
{
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
build-gpu-carry/bench_cuda --floors --formats tq2,tq3 --batch 8 --head-dim 128 > /tmp/$R/floors.md 2>&1; echo "floors rc $?"
grep -E "^\| tq" /tmp/$R/floors.md | cut -d'|' -f2-13,23
NCU_CLOCKS=none bash scripts/gpu-profile.sh /tmp/$R/b8-64k build-gpu-carry tq2,tq3 8 65536 128
for f in /tmp/$R/*/*.details.txt; do echo "== $f"
  grep -E "^ +(Duration|DRAM Throughput|Memory Throughput|L2 Cache Throughput|Compute \(SM\) Throughput|Executed Ipc Active|Issue Slots Busy|No Eligible|Active Warps Per Scheduler|Eligible Warps Per Scheduler|Achieved Occupancy|Registers Per Thread|Executed Instructions|SM Frequency|Warp Cycles Per Issued Instruction|Mem Busy|Max Bandwidth|Mem Pipes Busy) " $f
  echo "-- stalls (cycles per issued instruction)"; head -12 ${f%.details.txt}.stalls.txt
done
} > /tmp/$R/run.log 2>&1
cd /tmp && tar czf $OUT/$R/$R.tgz --exclude='*.ncu-rep' $R
cat /tmp/$R/run.log
