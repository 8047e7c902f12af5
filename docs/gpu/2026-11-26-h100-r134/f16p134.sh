#!/usr/bin/env bash
# r134: f16 keys also through the transposed-score kernel for groups <= 4 at d <= 128 (f16p: -DTQKV_PACKED_F16)
# against 5d9d5bd (base); and tq3 b8 64k with 1 and 2 cache copies (its graph steps ran 10 % over its single
# launches in r129-r131). usage: f16p134.sh OUTDIR RUN [ALTERNATIONS]
set -u
OUT=$1; R=$2; N=${3:-3}
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
timeout 300 $B/f16p/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "test rc $?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" /tmp/$R/test.log | head
for k in $(seq 1 $N); do for v in base f16p; do
  $B/$v/bench_cuda --grid issue --formats f16 > /tmp/$R/ab/$v-$k.md 2>&1; echo "$v-$k rc $?"
  grep -E "^\| (f16) " /tmp/$R/ab/$v-$k.md | awk -F'|' '{printf "  %s d%s b%s %s: %s/%s\n", $2, $4+0, $6+0, $7+0, $9+0, $10+0}'
done; done
for c in 1 2 1 2; do $B/base/bench_cuda --grid issue --formats tq3 --batch 8 --context 65536 --head-dim 128 --copies $c > /tmp/$R/ab/tq3-copies$c.md 2>&1
  echo "tq3 copies $c: $(grep -E '^\| tq3 ' /tmp/$R/ab/tq3-copies$c.md | awk -F'|' '{printf "%s/%s", $9+0, $10+0}')"; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
