#!/usr/bin/env bash
# r165: ncu at the card's own clocks, tq4 d = 128 32/8 heads at batch 1, 64k and 4k (0d34e5a's binaries):
# what the batch-1 loop runs at (SM clock, DRAM throughput, issue slots, pipes). usage: prof165.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
for ctx in 65536 4096; do
  NCU_CLOCKS=none bash scripts/gpu-profile.sh /tmp/$R build-gpu-carry tq4,tq2 1 $ctx 128 > /tmp/$R/profile-$ctx.log 2>&1
  echo "profile $ctx rc $?"
done
rm -f /tmp/$R/*.ncu-rep
tar czf $OUT/$R/$R.tgz -C /tmp $R
for f in /tmp/$R/*.details.txt; do echo "== $f"; grep -E "SM Frequency|DRAM Throughput|Duration|Issue Slots Busy|Memory Throughput|Compute \(SM\) Throughput|Executed Ipc Active|Achieved Occupancy" $f | head -12; done
