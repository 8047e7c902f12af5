#!/usr/bin/env bash
# r54: Nsight Compute profiles of HEAD's append kernel (f16 and f32 input) and of the decode kernel at batch 32, 16k.
set -u
O=$1; mkdir -p $O/x; B=build-gpu-carry
rm -rf $B; mkdir -p $B && tar xJf build-gpu-pack/bins.tar.xz -C $B
{ date -u; git rev-parse HEAD; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; } > $O/device.txt 2>&1
for t in f16:3 f32:25; do
  n=${t%%:*}; skip=${t##*:}
  ncu --set full --import-source no -k regex:append_kernel --launch-skip $skip --launch-count 1 -f -o /tmp/append-$n \
    $B/old/bench_cuda --formats tq4 --batch 1 --context 4096 --append > $O/x/append-$n.run.log 2>&1; echo "ncu append $n rc $?"
  ncu -i /tmp/append-$n.ncu-rep --page details > $O/x/append-$n.details.txt 2>&1
  ncu -i /tmp/append-$n.ncu-rep --page source --csv --print-source sass > $O/x/append-$n.sass.csv 2>&1
  grep -E "Duration|Executed Ipc Active|Issue Slots Busy|No Eligible|Achieved Occupancy|Registers Per|Memory Throughput|Executed Instructions  |Stall" $O/x/append-$n.details.txt | head -30
done
bash scripts/gpu-profile.sh $O/x/prof $B/old tq4 32 16384 128 > $O/x/prof.log 2>&1; echo "decode prof rc $?"; tail -12 $O/x/prof.log
rm -f $O/x/prof/*.ncu-rep
tar czf $O/r54.tgz -C $O x
