#!/usr/bin/env bash
# r138: ncu (full set, the card's own clocks) of the final code's decode kernel at b8 64k, d = 128, 32/8 heads, for
# tq3, tq2 and tq4: what the transposed kernels wait on. usage: prof138.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
NCU_CLOCKS=none bash scripts/gpu-profile.sh /tmp/$R build-gpu-carry tq3,tq2,tq4 8 65536 128 > /tmp/$R/run.log 2>&1
echo "gpu-profile rc $?" >> /tmp/$R/run.log
rm -f /tmp/$R/*.ncu-rep
for f in /tmp/$R/*.details.txt; do echo "== $f"; grep -E "SM Frequency|DRAM Throughput|^ +Duration|Executed Ipc A|Issue Slots Busy|Active Warps Per Scheduler|Eligible Warps|Registers Per|Achieved Occupancy" $f | head -12; done >> /tmp/$R/run.log
for f in /tmp/$R/*.stalls.txt; do echo "== $f"; head -8 $f; done >> /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
