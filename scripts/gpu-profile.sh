#!/usr/bin/env bash
# Nsight Compute profile of the decode kernel at one shape, one report per format pair, on the GPU
# machine: the full section set (occupancy, scheduler and warp-state statistics, memory and
# compute throughput) as text, and the per-instruction SASS counters (executed, stall samples) as
# CSV for scripts/gpu-bench/sass_mix.py.
#
# usage: scripts/gpu-profile.sh OUTDIR [BINDIR] [FORMATS] [BATCH] [CONTEXT] [HEAD_DIM]
#   defaults: build-gpu-carry, tq4,tq3,tq2,k8v4,f16, batch 8, context 65536, head dim 128
#   (the grid's issue shapes; --batch/--context/--head-dim pick one of them).
#   NCU_CLOCKS=none profiles at the card's own clocks (boost, as the benchmarks run) instead of
#   ncu's default of locking them to base; the warp stall reasons go to *.stalls.txt either way.
set -uo pipefail
OUT=${1:?usage: scripts/gpu-profile.sh OUTDIR [BINDIR] [FORMATS] [BATCH] [CONTEXT] [HEAD_DIM]}
BIN=${2:-build-gpu-carry}
FORMATS=${3:-tq4,tq3,tq2,k8v4,f16}
BATCH=${4:-8}
CONTEXT=${5:-65536}
HEAD_DIM=${6:-128}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
for f in ${FORMATS//,/ }; do
  rep="$OUT/ncu-$f-b$BATCH-$CONTEXT-d$HEAD_DIM"
  # The 4th decode launch: past the warm-up, still a single launch (graph replays come later).
  ncu --set full --clock-control "${NCU_CLOCKS:-base}" --import-source no -k regex:decode_mma_kernel --launch-skip 3 --launch-count 1 -f -o "$rep" \
    "$BIN/bench_cuda" --formats "$f" --batch "$BATCH" --context "$CONTEXT" --head-dim "$HEAD_DIM" --reps 5 \
    >"$rep.run.log" 2>&1 || { echo "ncu failed for $f"; tail -5 "$rep.run.log"; continue; }
  ncu -i "$rep.ncu-rep" --page details >"$rep.details.txt" 2>&1
  ncu -i "$rep.ncu-rep" --page source --csv --print-source sass >"$rep.sass.csv" 2>&1
  # Cycles per issued instruction spent in each stall reason (the largest first).
  ncu -i "$rep.ncu-rep" --page raw --csv 2>/dev/null | python3 -c '
import csv, sys
rows = list(csv.reader(sys.stdin))
if len(rows) >= 3:
    pre = "smsp__average_warps_issue_stalled_"
    got = [(float(v.replace(",", "")), k[len(pre):].replace("_per_issue_active.ratio", ""))
           for k, v in zip(rows[0], rows[2]) if k.startswith(pre) and k.endswith("_per_issue_active.ratio")]
    for v, k in sorted(got, reverse=True):
        print(f"{k:28s} {v:6.2f}")
' >"$rep.stalls.txt" 2>&1
  grep -E "Duration|Executed Ipc Active|Issue Slots Busy|No Eligible|Achieved Occupancy|Registers Per|Memory Throughput|Executed Instructions  " \
    "$rep.details.txt" | sed "s/^/$f: /"
done
