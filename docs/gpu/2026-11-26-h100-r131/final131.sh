#!/usr/bin/env bash
# r131: the full gpu-check of the carried binaries (c78156e: transposed scores for groups <= 4): tests, sanitizers,
# issue grid + SDPA + append (32k chunk and the decode step), floors, warm timeline. usage: final131.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry
SANITIZER_TIMEOUT=300 bash scripts/gpu-check.sh /tmp/$R build-gpu-carry > /tmp/$R/gpu-check.log 2>&1
echo "gpu-check rc $?"
tar czf $OUT/$R/$R.tgz -C /tmp $R
grep -A8 "== summary" /tmp/$R/gpu-check.log; grep -E "PASSED|FAILED|ERROR SUMMARY|RACECHECK SUMMARY" /tmp/$R/*.log | head
grep -iE "^\| append|^\| (tq4|tq2|tq3|k8v4) +\| +[0-9]+ \| +[0-9]+ \|" /tmp/$R/bench/tqkv.md | head -12
