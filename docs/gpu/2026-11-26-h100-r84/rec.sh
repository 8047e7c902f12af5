#!/usr/bin/env bash
# gpu-check.sh with the carried binaries, then old-vs-new append alternated. usage: rec.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry
SANITIZER_TIMEOUT=300 bash scripts/gpu-check.sh /tmp/$R build-gpu-carry > /tmp/$R/gpu-check.log 2>&1
B=build-gpu-carry
{ for k in 1 2 3; do for v in old new; do bin=$B/bench_cuda; [[ $v == old ]] && bin=$B/old/bench_cuda
    $bin --grid issue --formats tq4 --batch 1 --context 4096 --append > /tmp/$R/ab/$v-$k.md 2>&1; echo "$v-$k rc $?"; grep "^| append tq4" /tmp/$R/ab/$v-$k.md; done; done
} > /tmp/$R/ab/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
grep -A12 "== summary" /tmp/$R/gpu-check.log; grep -E "PASSED|FAILED|ERROR SUMMARY|RACECHECK SUMMARY|^append" /tmp/$R/*.log | head; grep "append" /tmp/$R/bench/tqkv.md | head; cat /tmp/$R/ab/run.log
