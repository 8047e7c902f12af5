#!/usr/bin/env bash
# r167: is tq3's graph-only slowness at b8 64k the card's clock under sustained load? nvidia-smi samples
# (20 ms: SM clock, power, temperature, throttle reasons) while tq3 b8 64k rows run right after a heavy grid
# (hot) and after 20 s idle (cool), 3 rounds x 4 rows each; 0d34e5a + trial env switches binary (switches unset).
# usage: heat167.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R/rows $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry/trial/bench_cuda
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active --format=csv,noheader,nounits -lms 20 > /tmp/$R/smi.csv &
SMI=$!
row() {  # $1 label
  echo "$1 start $(date +%s.%N)" >> /tmp/$R/marks.txt
  $B --formats tq3 --batch 8 --context 65536 --head-dim 128 > /tmp/$R/rows/$1.md 2>&1
  echo "$1 end $(date +%s.%N)" >> /tmp/$R/marks.txt
}
for k in 1 2 3; do
  $B --grid issue --formats tq4,k8v4 > /dev/null 2>&1
  for j in 1 2 3 4; do row hot-$k-$j; done
  sleep 20
  for j in 1 2 3 4; do row cool-$k-$j; done
done
kill $SMI
for f in /tmp/$R/rows/*.md; do echo "$(basename $f .md) $(grep -E '^\| tq3' $f | awk -F'|' '{print $9+0, $10+0}')"; done > /tmp/$R/rows.txt
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/rows.txt
