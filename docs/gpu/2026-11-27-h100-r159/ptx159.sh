#!/usr/bin/env bash
# r159: the sm_80 code path (partials through shared memory, kPartialsStored = false) on the H100: test_cuda built
# for compute_80 PTX only (-DTQKV_CUDA_ARCHS=80-virtual), JIT-compiled by the driver (no programmatic launch:
# the kernels' PTX is below 9.0). usage: ptx159.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R /tmp/b159
tar xJf build-gpu-pack/bins.tar.xz -C /tmp/b159
{ date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv; } > /tmp/$R/device.txt
CUDA_CACHE_MAXSIZE=4294967296 timeout 560 /tmp/b159/test_cuda_ptx80 --gtest_color=no > /tmp/$R/test-ptx80.log 2>&1
echo "test_cuda (compute_80 PTX) rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]|^\[       OK|^\[ RUN" /tmp/$R/test-ptx80.log | tail -25
tar czf $OUT/$R/$R.tgz -C /tmp $R
