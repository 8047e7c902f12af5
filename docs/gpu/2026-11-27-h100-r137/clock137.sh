#!/usr/bin/env bash
# r137: does the transposed kernel run at a higher SM clock? ncu SpeedOfLight at the card's own clocks, tq4 and k8v4,
# b8 64k and b32 16k, d = 128: dd1cdb1 (base) against 5d9d5bd (new), alternated. usage: clock137.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
for k in 1 2; do for f in tq4 k8v4; do for shape in "8 65536" "32 16384"; do set -- $shape; for v in base new; do
  ncu --clock-control none --section SpeedOfLight -k regex:decode_mma_kernel --launch-skip 3 --launch-count 2 \
    $B/$v/bench_cuda --grid issue --formats $f --batch $1 --context $2 --head-dim 128 --reps 5 > /tmp/$R/ncu-$v-$f-b$1-$2-$k.txt 2>&1
  echo "$v $f b$1 $2 ($k): $(grep -E 'SM Frequency|DRAM Throughput|^ +Duration' /tmp/$R/ncu-$v-$f-b$1-$2-$k.txt | awk '{printf "%s %s %s; ", $1, $(NF-1), $NF}')"
done; done; done; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
