#!/usr/bin/env python3
"""Instruction mix and stall reasons of a kernel's hot loop from ncu's SASS export.

usage: sass_mix.py NCU.sass.csv [...]   (scripts/gpu-profile.sh writes them)

"Hot" instructions are a decode kernel's tile loop (sass_loops.tile_loop_range: also at shapes
where it runs only a few iterations, e.g. batch 1, 4k), otherwise those executed more than 50
times as often as the kernel's first instruction (once per warp); a kernel without such a loop
(append) counts every instruction. Prints the share of each opcode among the hot instructions
executed and the share of each warp-stall reason among their samples, and the hot instructions'
share of all samples.
"""
import collections
import csv
import sys

from sass_loops import tile_loop_range


def summarize(path):
    rows = list(csv.reader(open(path)))
    header = rows[1]
    col = {h: i for i, h in enumerate(header)}
    body = [r for r in rows[2:] if r and r[0].startswith("0x")]
    executed, samples = col["Instructions Executed"], col["Warp Stall Sampling (All Samples)"]
    stalls = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
    total = sum(int(r[executed]) for r in body)
    per_warp = int(body[0][executed])
    span = tile_loop_range([(int(r[0], 16), r[1].strip()) for r in body])
    if span is not None:
        hot = [r for r in body if span[0] <= int(r[0], 16) <= span[1]]
    else:
        hot = [r for r in body if int(r[executed]) > 50 * per_warp] or body  # no loop: every instruction
    hot_total = sum(int(r[executed]) for r in hot)
    ops = collections.Counter()
    for r in hot:
        text = r[1].strip()
        if text.startswith("@"):
            text = text.split(None, 1)[1]
        ops[text.split()[0].split(".")[0]] += int(r[executed])
    stall = collections.Counter()
    for r in hot:
        for s in stalls:
            stall[s] += int(r[col[s]])
    hot_samples = max(1, sum(int(r[samples]) for r in hot))
    all_samples = max(1, sum(int(r[samples]) for r in body))
    print(f"{path.split('/')[-1]}: {total} instructions, {hot_total} in the hot loop "
          f"({100 * hot_total / total:.0f} %, {len(hot)} static), {per_warp} warps; "
          f"{100 * hot_samples / all_samples:.0f} % of the stall samples")
    print("  ops:", ", ".join(f"{k} {100 * v / hot_total:.1f}%" for k, v in ops.most_common(14)))
    print("  stalls:", ", ".join(f"{k[6:]} {100 * v / hot_samples:.0f}%" for k, v in stall.most_common(8)))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for p in sys.argv[1:]:
        summarize(p)
