#!/usr/bin/env bash
# r136: split counts with the transposed-score kernel (5d9d5bd), d = 128, 32/8 heads: batch 1 at 16k/64k (16 against
# the automatic choice), batch 8 at 16k/64k and batch 32 at 16k (1-8). usage: splits136.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
row() { $B/bench_cuda --grid issue --formats $1 --head-dim 128 --batch $2 --context $3 ${4:+--splits $4} > /tmp/$R/$1-b$2-$3-s${4:-auto}.md 2>&1
  echo "$1 b$2 $3 splits ${4:-auto}: $(grep -E "^\| $1 " /tmp/$R/$1-b$2-$3-s${4:-auto}.md | awk -F'|' '{printf "%s/%s", $9+0, $10+0}')"; }
{
for rep in 1 2; do
  for f in tq3 tq2 tq4; do for c in 16384 65536; do for s in auto 16 33; do [[ $s == auto ]] && s=; row $f 1 $c $s; done; done; done
  for f in tq4 tq3 tq2 k8v4; do for c in 16384 65536; do for s in auto 2 3 5 6 8; do [[ $s == auto ]] && s=; row $f 8 $c $s; done; done; done
  for f in tq4 tq3; do for s in auto 2; do [[ $s == auto ]] && s=; row $f 32 16384 $s; done; done
done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
