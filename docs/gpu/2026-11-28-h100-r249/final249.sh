#!/usr/bin/env bash
# r249: the gpu-check of c86976e (tq2 keys by interleaved nibbles; 8-bit codes against the rounded scale):
# the gpu-check (tests, sanitizers, issue grid + SDPA peer + append,
# floors, warm timeline). usage: final238.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R
rm -rf build-gpu-carry
SANITIZER_TIMEOUT=300 bash scripts/gpu-check.sh /tmp/$R build-gpu-carry > /tmp/$R/gpu-check.log 2>&1
echo "gpu-check rc $?"
grep -A8 "== summary" /tmp/$R/gpu-check.log; grep -E "PASSED|FAILED|ERROR SUMMARY|RACECHECK SUMMARY|boundary ties" /tmp/$R/*.log | head -12
grep -iE "^\| append|^\| (tq4|tq2|tq3|k8v4) +\| +[0-9]+ \| +[0-9]+ \|" /tmp/$R/bench/tqkv.md | head -12
tar czf $OUT/$R.tgz -C /tmp $R && cp /tmp/$R/gpu-check.log $OUT/
