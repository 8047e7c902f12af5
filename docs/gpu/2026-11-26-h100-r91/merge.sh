#!/usr/bin/env bash
# gpu-check.sh with the carried binaries, then old (v3/) vs new decode alternated (tq4 issue grid) and both timelines. usage: merge.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry
SANITIZER_TIMEOUT=300 bash scripts/gpu-check.sh /tmp/$R build-gpu-carry > /tmp/$R/gpu-check.log 2>&1
B=build-gpu-carry
{ for k in 1 2; do for v in old new; do bin=$B/bench_cuda; [[ $v == old ]] && bin=$B/v3/bench_cuda
    $bin --grid issue --formats tq4,tq3,k8v4 --json /tmp/$R/ab/$v-$k.json > /tmp/$R/ab/$v-$k.md 2>&1; echo "$v-$k rc $?"; done; done
  $B/v3/decode_timeline 1:4096 1:16384 > /tmp/$R/ab/timeline-old.md 2>&1; $B/decode_timeline 1:4096 1:16384 > /tmp/$R/ab/timeline-new.md 2>&1
} > /tmp/$R/ab/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
grep -A8 "== summary" /tmp/$R/gpu-check.log; grep -E "PASSED|FAILED|ERROR SUMMARY|RACECHECK SUMMARY" /tmp/$R/gpu-check.log; cat /tmp/$R/ab/run.log
for v in old new; do echo "== $v"; grep -E "^\| tq4 .*\|  *1 \|" /tmp/$R/ab/$v-1.md /tmp/$R/ab/$v-2.md | cut -c1-150; done
grep -E "split merge done|finish done|event time" /tmp/$R/ab/timeline-*.md
