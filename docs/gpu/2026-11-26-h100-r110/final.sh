#!/usr/bin/env bash
# The full gpu-check of the carried binaries (tests, sanitizers, issue grid + SDPA, floors, warm timeline). usage: final.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry
SANITIZER_TIMEOUT=300 bash scripts/gpu-check.sh /tmp/$R build-gpu-carry > /tmp/$R/gpu-check.log 2>&1
echo "gpu-check rc $?"
tar czf $OUT/$R/$R.tgz -C /tmp $R
grep -A8 "== summary" /tmp/$R/gpu-check.log; grep -E "PASSED|FAILED|ERROR SUMMARY|RACECHECK SUMMARY" /tmp/$R/*.log | head; grep -i "append" /tmp/$R/bench/tqkv.md | head
