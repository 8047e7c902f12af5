#!/usr/bin/env bash
# r151: ncu source counters of the tq4 d=128 decode kernel (caf9582) at b1 4k and b8 16k, own clocks.
set -uo pipefail
OUT=$1
mkdir -p $OUT /tmp/b && tar xJf build-gpu-pack/bins.tar.xz -C /tmp/b
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv > $OUT/device.txt
for shape in "1 4096" "8 16384" "1 65536"; do
  set -- $shape
  NCU_CLOCKS=none bash scripts/gpu-profile.sh $OUT/prof /tmp/b/base tq4 $1 $2 128 2>&1 | tail -12
done
ls -la $OUT/prof | head
