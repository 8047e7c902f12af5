#!/usr/bin/env bash
# r208: the final code of the nineteenth session (bench_cuda times the append queued behind a wait and from an idle stream;
# kernels as r202): the gpu-check (tests, sanitizers, issue grid + SDPA + append, floors, warm
# timeline); FULL=1 also the whole grid with the SDPA peer. usage: final208.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry
SANITIZER_TIMEOUT=300 bash scripts/gpu-check.sh /tmp/$R build-gpu-carry > /tmp/$R/gpu-check.log 2>&1
echo "gpu-check rc $?"
grep -A8 "== summary" /tmp/$R/gpu-check.log; grep -E "PASSED|FAILED|ERROR SUMMARY|RACECHECK SUMMARY" /tmp/$R/*.log | head
grep -iE "^\| append|^\| (tq4|tq2|tq3|k8v4) +\| +[0-9]+ \| +[0-9]+ \|" /tmp/$R/bench/tqkv.md | head -12
if [[ ${FULL:-1} == 1 ]]; then
  GRID=full bash scripts/gpu-bench/run.sh /tmp/$R/full build-gpu-carry > /tmp/$R/full.log 2>&1
  echo "full run.sh rc $?"; tail -3 /tmp/$R/full.log
fi
tar czf $OUT/$R/$R.tgz -C /tmp $R
