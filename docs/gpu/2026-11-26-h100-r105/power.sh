#!/usr/bin/env bash
# r105: is the decode kernel held back by power/clocks where the no-arithmetic skeleton is not?
# nvidia-smi samples (20 ms) while tq4 b8 64k decode and the --floors skeletons run; ncu SpeedOfLight
# (own clocks) of both kernels at b8 64k.
# usage: power.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
S="--batch 8 --context 65536 --head-dim 128 --formats tq4"
{
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm,clocks.max.mem --format=csv
Q=timestamp,power.draw,clocks.sm,clocks.mem,temperature.gpu,clocks_event_reasons.active
nvidia-smi --query-gpu=$Q --format=csv,noheader >/dev/null 2>&1 || Q=timestamp,power.draw,clocks.sm,clocks.mem,temperature.gpu,clocks_throttle_reasons.active
nvidia-smi --query-gpu=$Q --format=csv,noheader,nounits -lms 20 > /tmp/$R/smi.csv &
P=$!
sleep 1
for k in 1 2 3; do echo "decode $k $(date +%H:%M:%S.%N)"; $B/bench_cuda --grid issue $S > /tmp/$R/decode-$k.md 2>&1; echo "decode $k end $(date +%H:%M:%S.%N)"; done
echo "floors $(date +%H:%M:%S.%N)"; $B/bench_cuda --grid issue --floors $S > /tmp/$R/floors.md 2>&1; echo "floors end $(date +%H:%M:%S.%N)"
sleep 1; kill $P
echo "== ncu decode"
ncu --clock-control none --section SpeedOfLight -k regex:decode_mma_kernel --launch-skip 3 --launch-count 3 $B/bench_cuda --grid issue $S --reps 5 > /tmp/$R/ncu-decode.txt 2>&1
grep -E "decode_mma_kernel|SM Frequency|DRAM Throughput|Duration|Grid Size" /tmp/$R/ncu-decode.txt | head -20
echo "== ncu skeletons"
timeout 300 ncu --clock-control none --section SpeedOfLight --section LaunchStats -k regex:"tiled_read_kernel|split_read_kernel" --launch-count 300 $B/bench_cuda --grid issue --floors $S > /tmp/$R/ncu-floors.txt 2>&1
echo "ncu floors rc $?"
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
cat /tmp/$R/floors.md | tail -5
