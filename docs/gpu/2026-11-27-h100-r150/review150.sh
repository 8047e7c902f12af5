#!/usr/bin/env bash
# r150: the review's host-only mends (one codebook registry lookup per side in the backend; the test's
# codebook copies only for caller-codebook cases; decode_timeline fills scales only where a side has them):
# test_cuda, and decode_timeline --format f16 / tq4 at 1:4096. usage: review150.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
$B/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "test_cuda rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test.log
for f in f16 tq4; do $B/decode_timeline --format $f 1:4096 > /tmp/$R/timeline-$f.md 2>&1; echo "timeline $f rc $?"; grep "event time" /tmp/$R/timeline-$f.md; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
