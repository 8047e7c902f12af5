#!/usr/bin/env python3
"""Static size of each decode kernel's tile loop, for two builds of the same objects.

usage: sass_loops.py OLD.o NEW.o [PATTERN]   (objects of one decode pair, e.g.
       build-gpu/cuda/CMakeFiles/tqkv_cuda.dir/decode_tq4_tq4.cu.o from two checkouts)

The tile loop is the shortest backward branch whose body holds an HMMA: one 16-position tile per
iteration. A change outside the loop can still change it, through ptxas's register allocation
(performance-notes.md v13-v15: +33 to +63 instructions per tile from code before or after the
loop), so check it before spending device time. Prints, per kernel whose label contains PATTERN,
the instruction count of that loop in both objects and the opcodes whose counts differ. Kernels
are matched by format pair, head dim and form, so one whose stage count changed is compared too:
it runs stages / 2 tiles per iteration (decode_launch.cuh), and its line says so.
Needs cuobjdump and nvdisasm (the CUDA toolkit's, or PyPI's nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm)
on PATH, or cuobjdump in $CUOBJDUMP with nvdisasm on PATH.
"""
import collections
import os
import re
import subprocess
import sys

KERNEL = re.compile(r"_ZN4tqkv11cuda_detail17decode_mma_kernelILNS_6FormatE(\d)ELS2_(\d)ELi(\d+)ELi(\d+)ELi(\d+)ELb(\d)")
FORMATS = ["f16", "tq2", "tq3", "tq4", "tq8"]


def kernels(obj):
    """Function name -> list of SASS instructions (address, text)."""
    tool = os.environ.get("CUOBJDUMP", "cuobjdump")
    text = subprocess.run([tool, "-sass", obj], capture_output=True, text=True, check=True).stdout
    funcs, name = {}, None
    for line in text.splitlines():
        m = re.match(r"\s+Function : (\S+)", line)
        if m:
            name = m.group(1)
            funcs[name] = []
            continue
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m and name:
            funcs[name].append((int(m.group(1), 16), m.group(2)))
    return funcs


def tile_loop_range(instructions):
    """(first, last) address of the shortest backward-branch loop that contains an HMMA, or None."""
    best = None
    for address, text in instructions:
        m = re.search(r"BRA\s+\S*?0x([0-9a-f]+)", text)
        if not m or int(m.group(1), 16) >= address:
            continue
        first = int(m.group(1), 16)
        body = [t for a, t in instructions if first <= a <= address]
        if any("HMMA" in t for t in body) and (best is None or len(body) < best[0]):
            best = (len(body), first, address)
    return best[1:] if best else None


def tile_loop(instructions):
    """Opcode counts of the tile loop (tile_loop_range)."""
    span = tile_loop_range(instructions)
    if span is None:
        return collections.Counter()
    body = [t for a, t in instructions if span[0] <= a <= span[1]]
    return collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0] for t in body)


def label(name):
    m = KERNEL.search(name)
    if not m:
        return name
    k, v, d, _, _, packed = m.groups()
    return f"K {FORMATS[int(k)]} V {FORMATS[int(v)]} d={d}" + (" transposed" if packed == "1" else "")


def tiles_per_iteration(name):
    m = KERNEL.search(name)
    return int(m.group(5)) // 2 if m else 1


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    old, new = kernels(sys.argv[1]), kernels(sys.argv[2])
    # A label can name kernels of several stage counts: the same count first, then any.
    new_by_key = {(label(n), tiles_per_iteration(n)): n for n in new}
    new_by_label = {label(n): n for n in new}
    pattern = sys.argv[3] if len(sys.argv) > 3 else ""
    for name in sorted(old, key=label):
        if label(name) not in new_by_label or pattern not in label(name):
            continue
        name_new = new_by_key.get((label(name), tiles_per_iteration(name)), new_by_label[label(name)])
        a, b = tile_loop(old[name]), tile_loop(new[name_new])
        if not a and not b:
            continue
        line = f"{label(name):32s} {sum(a.values()):5d} -> {sum(b.values()):5d}"
        ta, tb = tiles_per_iteration(name), tiles_per_iteration(name_new)
        if ta != tb:
            line += f" (tiles per iteration {ta} -> {tb}: {sum(a.values()) // ta} -> {sum(b.values()) // tb} per tile)"
        diffs = [f"{op} {a[op]}->{b[op]}" for op in sorted(set(a) | set(b)) if a[op] != b[op]]
        print(line + ("   " + ", ".join(diffs) if diffs else ""))


if __name__ == "__main__":
    main()
