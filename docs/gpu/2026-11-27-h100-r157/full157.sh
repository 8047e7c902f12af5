#!/usr/bin/env bash
# r157: the final code (93bdb7e): test_cuda, then the whole grid with
# the SDPA peer (GRID=full scripts/gpu-bench/run.sh). usage: full157.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv; } > /tmp/$R/device.txt
build-gpu-carry/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "test_cuda rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test.log
GRID=full bash scripts/gpu-bench/run.sh /tmp/$R/full build-gpu-carry > /tmp/$R/full.log 2>&1
echo "full run.sh rc $?"; tail -3 /tmp/$R/full.log
tar czf $OUT/$R/$R.tgz -C /tmp $R
