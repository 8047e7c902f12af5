#!/usr/bin/env python3
"""Medians of r204-r206's append rows (queued us, % copy, idle-stream us) and decode-step rows (decode graph
us, append_step + decode graph us, append us) per binary, from the runs' run.log files.
usage: medians.py docs/gpu/2026-11-27-h100-r20{4,5,6}/run.log"""
import re
import statistics
import sys

rows = {}
for path in sys.argv[1:]:
    run = path.split("h100-")[1].split("/")[0]
    binary = None
    for line in open(path):
        m = re.match(r"(\w+) #\d+ rc", line)
        if m:
            binary = m.group(1)
            continue
        m = re.match(r"\| append tq4\s+\| (\w+) input .*?\|\s+([\d.]+) \|\s+[\d.]+ \|\s+([\d.]+)% \|\s+([\d.]+) \|", line)
        if m:
            rows.setdefault((run, binary, m.group(1)), []).append(tuple(float(m.group(i)) for i in (2, 3, 4)))
        m = re.match(r"\| tq4\s+\|\s+(\d+) \|\s+(\d+) \|\s+([\d.]+) \|\s+([\d.]+) \|\s+([\d.]+) \|$", line)
        if m:
            key = (run, binary, f"step b{m.group(1)} {m.group(2)}")
            rows.setdefault(key, []).append(tuple(float(m.group(i)) for i in (3, 4, 5)))
for key in sorted(rows):
    v = rows[key]
    print(*key, len(v), [round(statistics.median(x[i] for x in v), 1) for i in range(3)])
