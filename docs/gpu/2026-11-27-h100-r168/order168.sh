#!/usr/bin/env bash
# r168: tq3's b8 64k graph step (d = 128, 32/8) by what ran before it in the same process: alone (C), after tq3's
# other batch-8 rows (D), after all of tq3's issue rows (A), in the standard issue grid after tq4 and k8v4 (B);
# alternated 3x; 0d34e5a + trial env switches binary (switches unset). usage: order168.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R/rows $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry/trial/bench_cuda
for k in 1 2 3; do
  $B --formats tq3 --batch 8 --context 65536 --head-dim 128 > /tmp/$R/rows/C-$k.md 2>&1
  $B --grid issue --formats tq3 --batch 8 > /tmp/$R/rows/D-$k.md 2>&1
  $B --grid issue --formats tq3 > /tmp/$R/rows/A-$k.md 2>&1
  $B --grid issue --formats tq4,k8v4,tq3,tq2 > /tmp/$R/rows/B-$k.md 2>&1
done
for f in /tmp/$R/rows/*.md; do echo "$(basename $f .md) $(grep -E '^\| tq3 ' $f | awk -F'|' '$4+0==128 && $6+0==8 && $7+0==65536 {print $9+0, $10+0}')"; done | sort > /tmp/$R/rows.txt
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/rows.txt
