#!/usr/bin/env bash
# r192: where batch 8's step goes at one block per SM (the r191 rule: tq4 d = 128, 2 splits, lone
# pairs): graph timelines with every block's SM and loop times at 16k and 64k, against 4 splits.
# usage: tl192.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
$B/decode_timeline --graph --raw 8:16384 8:65536 > /tmp/$R/tl-auto.log 2>&1; echo "auto rc $?"; grep -E "^batch" /tmp/$R/tl-auto.log
$B/decode_timeline --graph --raw --splits 4 8:16384 8:65536 > /tmp/$R/tl-s4.log 2>&1; echo "s4 rc $?"; grep -E "^batch" /tmp/$R/tl-s4.log
date -u
} > /tmp/$R/run.log 2>&1
cp /tmp/$R/*.log $OUT/$R/
cat /tmp/$R/run.log
