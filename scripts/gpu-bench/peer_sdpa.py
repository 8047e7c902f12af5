#!/usr/bin/env python3
"""The peer of bench_cuda: PyTorch SDPA decode steps with fp16 K/V, on the shapes of a bench_cuda
JSON file (so the grid is defined once, in bench_cuda), measured the same way.

For each shape (head dim, query/KV heads, batch, context): q [batch, q_heads, 1, d] fp16,
K and V [batch, kv_heads, context, d] fp16. GQA through enable_gqa; a backend that refuses it gets
K/V expanded to q_heads beforehand (outside the timing; the row says "+expand"). The flash,
efficient and cuDNN backends are each tried on a few launches (math only when none of them runs);
the fastest is timed in full. Cold L2, repetitions and graph replays follow bench_cuda's rule (the
JSON's plan_rule): rotating copies, median of single launches timed with CUDA events, and
CUDA-graph replays of graph_steps decode steps (time per step). GB/s counts the fp16 K/V bytes of
the step (as bench_cuda's f16 rows); % of bandwidth uses bench_cuda's measurements of the run.

usage: peer_sdpa.py TQKV_JSON OUT_JSON
"""
import argparse
import datetime
import json
import math
import statistics
import sys
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# Launches per backend in the trial that picks the fastest (after one warm-up launch).
TRIAL_LAUNCHES = 5
BACKENDS = [("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
            ("cudnn", SDPBackend.CUDNN_ATTENTION)]
FALLBACK = ("math", SDPBackend.MATH)


def shapes_of(tqkv):
    """Unique shapes of the bench_cuda rows, in their order."""
    seen = {}
    for r in tqkv["rows"]:
        key = (r["head_dim"], r["q_heads"], r["kv_heads"], r["batch"], r["context"])
        seen.setdefault(key, None)
    return list(seen)


def plan(rule, bytes_read, free_bytes):
    """bench_cuda's make_plan for one shape: copies (0 = does not fit), reps, graph replays."""
    fit = max(free_bytes - rule["reserve_bytes"], 0) // bytes_read
    wanted = rule["copies_override"] or -(-rule["cold_bytes"] // bytes_read)
    copies = min(max(wanted, 1), fit)
    reps = int(min(max(rule["timed_bytes"] / bytes_read, rule["min_reps"]), rule["max_reps"]))
    replays = min(max(reps // rule["reps_per_graph_replay"], rule["min_graph_replays"]), rule["max_graph_replays"])
    return copies, reps, replays


def event_median_us(launches, step):
    """Median microseconds of `launches` event-timed calls of step()."""
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(launches)]
    for a, b in events:
        a.record()
        step()
        b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in events) * 1e3


class Shape:
    def __init__(self, d, q_heads, kv_heads, batch, context, rule):
        self.d, self.q_heads, self.kv_heads, self.batch, self.context = d, q_heads, kv_heads, batch, context
        self.group = q_heads // kv_heads
        self.bytes_read = 2 * batch * kv_heads * context * d * 2  # K and V, fp16
        free, _ = torch.cuda.mem_get_info()
        self.copies, self.reps, self.graph_replays = plan(rule, self.bytes_read, free)
        self.rule = rule
        self.cursor = 0  # the next copy a step reads: every launch, trials included, moves on (cold L2)

    def allocate(self, heads):
        """copies x (K, V) of `heads` heads in one tensor; None when it does not fit."""
        free, _ = torch.cuda.mem_get_info()
        need = self.copies * self.bytes_read * heads // self.kv_heads
        if need + self.rule["reserve_bytes"] > free:
            return None
        kv = torch.empty(self.copies, 2, self.batch, heads, self.context, self.d, device="cuda", dtype=torch.float16)
        return kv.normal_()

    def step_over(self, q, kv, enable_gqa):
        """A decode step reading the next copy of kv."""
        def step():
            c = self.cursor % self.copies
            self.cursor += 1
            return F.scaled_dot_product_attention(q, kv[c, 0], kv[c, 1], enable_gqa=enable_gqa)
        return step


def first_line(error):
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__


def run_shape(shape):
    """Times one shape: (kernel, median us, graph us/step or None, trials, refusals) or a status."""
    if shape.copies == 0:
        return "skipped: memory"
    kv = shape.allocate(shape.kv_heads)
    if kv is None:
        return "skipped: memory"
    q = torch.randn(shape.batch, shape.q_heads, 1, shape.d, device="cuda", dtype=torch.float16)
    gqa = shape.group > 1
    expanded = None
    refused = {}

    def runnable(backends):
        """(name, backend, step) of each backend that runs the shape, natively or on expanded K/V."""
        nonlocal expanded
        found = []
        for name, backend in backends:
            try:
                step = shape.step_over(q, kv, gqa)
                with sdpa_kernel(backend):
                    step()
                found.append((name, backend, step))
                continue
            except RuntimeError as e:
                refused[name] = first_line(e)
            if not gqa:
                continue
            if expanded is None:  # K/V repeated to q_heads once, for backends that refuse enable_gqa
                expanded = shape.allocate(shape.q_heads)
                if expanded is None:
                    refused[name + "+expand"] = "expanded K/V do not fit"
                    continue
                # q head h reads KV head h // group: a broadcast copy, no temporary.
                split_heads = (shape.copies, 2, shape.batch, shape.kv_heads, shape.group, shape.context, shape.d)
                expanded.view(split_heads).copy_(kv.unsqueeze(4).expand(split_heads))
            try:
                step = shape.step_over(q, expanded, False)
                with sdpa_kernel(backend):
                    step()
                found.append((name + "+expand", backend, step))
            except RuntimeError as e:
                refused[name + "+expand"] = first_line(e)
        return found

    candidates = runnable(BACKENDS) or runnable([FALLBACK])
    if not candidates:
        return "error: no SDPA backend runs this shape"
    trials = {}
    for name, backend, step in candidates:
        with sdpa_kernel(backend):
            trials[name] = event_median_us(TRIAL_LAUNCHES, step)
    name, backend, step = min(candidates, key=lambda c: trials[c[0]])
    with sdpa_kernel(backend):
        for _ in range(shape.rule["warmup"]):
            step()
        us = event_median_us(shape.reps, step)
        try:
            graph_us = graph_us_per_step(shape, step)
        except RuntimeError as e:
            refused["graph"] = first_line(e)
            graph_us = None
    return "sdpa_" + name, us, graph_us, trials, refused


def graph_us_per_step(shape, step):
    """Graphs of graph_steps decode steps over consecutive copies, replayed round-robin as in
    bench_cuda. Each runs once first: torch has no upload call (bench_cuda uploads instead), and
    the first replay would pay for it."""
    steps = shape.rule["graph_steps"]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream before capture (torch's advice)
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graphs, pool = [], None
    for _ in range(math.ceil(shape.copies / steps)):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            for _ in range(steps):
                step()
        pool = graph.pool()
        graphs.append(graph)
    for graph in graphs:
        graph.replay()
    replay = iter(range(1 << 62))
    return event_median_us(shape.graph_replays, lambda: graphs[next(replay) % len(graphs)].replay()) / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tqkv_json", help="bench_cuda --json output of the same run (shapes, plan rule, bandwidths)")
    ap.add_argument("out_json", help="where to write the peer's rows")
    args = ap.parse_args()
    # Backends that refuse a shape warn on every try; the refusals are recorded in the rows instead.
    warnings.filterwarnings("ignore", category=UserWarning)
    if not torch.cuda.is_available():
        print("peer_sdpa: no CUDA device")
        return 0
    with open(args.tqkv_json) as f:
        tqkv = json.load(f)
    rule = tqkv["plan_rule"]
    common = {"card": torch.cuda.get_device_name(), "date": datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"), "copy_gbs": tqkv["copy_gbs"], "read_gbs": tqkv["read_gbs"]}
    out = {"tool": f"torch {torch.__version__} sdpa", "device": common["card"], **common, "plan_rule": rule,
           "rows": []}
    print(f"torch {torch.__version__}, {common['card']}; bandwidths from {args.tqkv_json}: read "
          f"{tqkv['read_gbs']:.0f} GB/s, copy {tqkv['copy_gbs']:.0f} GB/s")
    print("| peer | d | heads | batch | context | median us | graph us/step | graph GB/s | % read | trials (us) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for d, qh, kvh, batch, ctx in shapes_of(tqkv):
        shape = Shape(d, qh, kvh, batch, ctx, rule)
        row = {"format": "f16", "kernel": "sdpa", "head_dim": d, "q_heads": qh, "kv_heads": kvh, "batch": batch,
               "context": ctx, "bytes_read": shape.bytes_read, "status": "ok", "median_us": None,
               "graph_us_per_step": None, "gbs": None, "graph_gbs": None, "pct_read_bw": None, "pct_copy_bw": None,
               "graph_pct_read_bw": None, "graph_pct_copy_bw": None, "copies": shape.copies, "reps": shape.reps,
               **common}
        try:
            result = run_shape(shape)
        except torch.cuda.OutOfMemoryError:
            result = "skipped: memory"
        torch.cuda.empty_cache()
        head = f"| sdpa | {d} | {qh}/{kvh} | {batch} | {ctx} |"
        if isinstance(result, str):
            row["status"] = result
            print(f"{head} {result} | | | | |", flush=True)
        else:
            kernel, us, graph_us, trials, refused = result
            gbs = shape.bytes_read / us / 1e3
            row.update(kernel=kernel, median_us=us, gbs=gbs, pct_read_bw=100 * gbs / tqkv["read_gbs"],
                       pct_copy_bw=100 * gbs / tqkv["copy_gbs"], trials_us=trials, refused=refused)
            if graph_us is not None:
                graph_gbs = shape.bytes_read / graph_us / 1e3
                row.update(graph_us_per_step=graph_us, graph_gbs=graph_gbs,
                           graph_pct_read_bw=100 * graph_gbs / tqkv["read_gbs"],
                           graph_pct_copy_bw=100 * graph_gbs / tqkv["copy_gbs"])
            graph_text = ("— | — | —" if graph_us is None else
                          f"{graph_us:.1f} | {row['graph_gbs']:.0f} | {row['graph_pct_read_bw']:.1f}%")
            trial_text = ", ".join(f"{k} {v:.1f}" for k, v in trials.items())
            print(f"{head} {us:.1f} | {graph_text} | {kernel}: {trial_text} |", flush=True)
        out["rows"].append(row)
        with open(args.out_json, "w") as f:  # rewritten per row: an interrupted run keeps its rows
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
