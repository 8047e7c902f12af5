#!/usr/bin/env bash
# r154: ncu source counters of the tq4 d=128 decode kernel at 06da817 (b1 4k, b8 16k), own clocks; one tarball.
set -uo pipefail
OUT=$1
mkdir -p $OUT /tmp/b /tmp/p154 && tar xJf build-gpu-pack/bins.tar.xz -C /tmp/b
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv > /tmp/p154/device.txt
for shape in "1 4096" "8 16384"; do
  set -- $shape
  NCU_CLOCKS=none bash scripts/gpu-profile.sh /tmp/p154 /tmp/b/new tq4 $1 $2 128 2>&1 | tail -9
done
rm -f /tmp/p154/*.ncu-rep
tar czf $OUT/p154.tgz -C /tmp p154
