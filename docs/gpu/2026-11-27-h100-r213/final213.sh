#!/usr/bin/env bash
# r213: the final code of the nineteenth session (b0b0890: the tensor-core append's branch-free loads, compiled-in
# row bytes, two-FFMA code bucket and fused length-4 butterflies; bench_cuda's queued append row): the gpu-check
# (tests, sanitizers, issue grid + SDPA + append, floors, warm timeline), then bench_cuda --append of this code
# against 4882f11's (prev/: the session's first commit, kernels as r202) alternated N x. usage: final213.sh OUTDIR RUN [N]
set -u
OUT=$1; R=$2; N=${3:-3}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry
SANITIZER_TIMEOUT=300 bash scripts/gpu-check.sh /tmp/$R build-gpu-carry > /tmp/$R/gpu-check.log 2>&1
echo "gpu-check rc $?"
grep -A8 "== summary" /tmp/$R/gpu-check.log; grep -E "PASSED|FAILED|ERROR SUMMARY|RACECHECK SUMMARY|boundary ties" /tmp/$R/*.log | head -12
grep -iE "^\| append|^\| (tq4|tq2|tq3|k8v4) +\| +[0-9]+ \| +[0-9]+ \|" /tmp/$R/bench/tqkv.md | head -12
for k in $(seq 1 $N); do for bin in prev .; do
  name=$([[ $bin == . ]] && echo new || echo prev)
  build-gpu-carry/$bin/bench_cuda --grid quick --formats tq4 --batch 1 --context 4096 --append > /tmp/$R/ab/$name-$k.md 2>&1; echo "$name #$k rc $?"
  grep -E "^\| append tq4|^\| tq4 +\| +[0-9]+ +\| +[0-9]+ +\| +[0-9.]+ +\| +[0-9.]+ +\| +[0-9.]+ +\|$" /tmp/$R/ab/$name-$k.md
done; done
tar czf $OUT/$R/$R.tgz -C /tmp $R
