#!/usr/bin/env bash
# r252: the gpu-check of HEAD (tests, sanitizers, issue grid + SDPA peer + append, floors, warm
# timelines), then d = 512's split counts (tq4, 32/8 heads, b8 16k: the target at the 10 % edge),
# alternated twice. usage: run252.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R
rm -rf build-gpu-carry
SANITIZER_TIMEOUT=300 bash scripts/gpu-check.sh /tmp/$R build-gpu-carry > /tmp/$R/gpu-check.log 2>&1
echo "gpu-check rc $?"
grep -A8 "== summary" /tmp/$R/gpu-check.log; grep -E "PASSED|FAILED|ERROR SUMMARY|RACECHECK SUMMARY" /tmp/$R/*.log | head -12
grep -iE "^\| append|^\| (tq4|tq2|tq3|k8v4) +\| +[a-z]+ +\| +[0-9]+ \| +[0-9]+ \|" /tmp/$R/bench/tqkv.md | head -40
B=build-gpu-carry/bench_cuda
$B --plan --grid issue --formats tq4 --head-dim 512 > /tmp/$R/d512-plan.txt 2>&1
for round in 1 2; do
  for s in auto 1 2 3 4 6 8; do
    args=(); [[ $s != auto ]] && args=(--splits $s)
    echo "== round $round splits $s" >> /tmp/$R/d512-splits.txt
    $B --grid issue --formats tq4 --head-dim 512 "${args[@]}" 2>&1 | grep -E "^\| tq4" >> /tmp/$R/d512-splits.txt
  done
done
cat /tmp/$R/d512-plan.txt /tmp/$R/d512-splits.txt
tar czf $OUT/$R.tgz -C /tmp $R && cp /tmp/$R/gpu-check.log $OUT/
