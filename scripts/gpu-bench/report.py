#!/usr/bin/env python3
"""Merges a bench_cuda JSON and a peer_sdpa JSON of the same run into bench/results/NAME.md (tables
with the speedup over the peer for each shape the peer ran) and NAME.png (% of the read bandwidth
and speedup over SDPA against context, per format).

Speedup = peer time / tqkv time for the same shape (d, heads, batch, context): from CUDA-graph
replays (time per step) and from single launches. Rows that did not run keep their status.

usage: PY=$(scripts/eval/setup-venv.sh)
       $PY scripts/gpu-bench/report.py --tqkv tqkv.json [--peer sdpa.json] --name NAME [--out-dir bench/results]
"""
import argparse
import json
import os
import statistics
import sys

SHAPE_KEYS = ("head_dim", "q_heads", "kv_heads", "batch", "context")


def shape_of(row):
    return tuple(row[k] for k in SHAPE_KEYS)


def layout_of(row):
    return row["head_dim"], row["q_heads"], row["kv_heads"]


def ok(row):
    return row is not None and row["status"] == "ok"


def speedup(peer, row, key):
    if ok(peer) and ok(row) and peer.get(key) and row.get(key):
        return peer[key] / row[key]
    return None


def fmt(x, spec=".1f", suffix=""):
    return "—" if x is None else f"{x:{spec}}{suffix}"


def series_name(row):
    """Format, with the kernel when a run timed more than the shipped one."""
    return row["format"] if row["kernel"] == "mma" else f"{row['format']} ({row['kernel']})"


def load(path):
    with open(path) as f:
        data = json.load(f)
    if "rows" not in data:
        sys.exit(f"report.py: {path}: not a bench_cuda / peer_sdpa JSON (no 'rows')")
    return data


def markdown(tqkv, peer, peer_by_shape, name):
    lines = [f"# {name}: tqkv decode vs PyTorch SDPA (fp16 K/V)", ""]
    lines.append(f"- card: {tqkv['device']} ({tqkv['date']}); read-only kernel {tqkv['read_gbs']:.0f} GB/s, "
                 f"device-to-device copy {tqkv['copy_gbs']:.0f} GB/s (read + write)")
    lines.append(f"- peer: {peer['tool']} on {peer['card']} ({peer['date']})" if peer else "- peer: not run")
    lines += ["- times: median of single launches (CUDA events) and per step of CUDA-graph replays of "
              f"{tqkv['plan_rule']['graph_steps']} decode steps; cold L2 (rotating copies). GB/s over the KV bytes a "
              "step reads; % read = of the read-only kernel's bandwidth. Speedup = SDPA time / tqkv time, same shape.",
              "- regenerate: see bench/results/README.md", ""]

    rows = tqkv["rows"]
    lines += ["## Summary (graph replays; speedups over the shapes SDPA ran too)", "",
              "| format | shapes | median % read | median speedup | min speedup | max speedup |",
              "| --- | --- | --- | --- | --- | --- |"]
    order = {s: i for i, s in enumerate(dict.fromkeys(series_name(r) for r in rows))}
    for series in order:
        mine = [r for r in rows if series_name(r) == series and ok(r)]
        ups = [u for r in mine if (u := speedup(peer_by_shape.get(shape_of(r)), r, "graph_us_per_step"))]
        pct = [r["graph_pct_read_bw"] for r in mine]
        lines.append(f"| {series} | {len(mine)} | {fmt(statistics.median(pct) if pct else None, '.1f', '%')} | "
                     f"{fmt(statistics.median(ups) if ups else None, '.2f', 'x')} | "
                     f"{fmt(min(ups) if ups else None, '.2f', 'x')} | {fmt(max(ups) if ups else None, '.2f', 'x')} |")
    lines.append("")

    for layout in dict.fromkeys(layout_of(r) for r in rows):
        d, qh, kvh = layout
        lines += [f"## d = {d}, {qh} query / {kvh} KV heads", "",
                  "| format | kernel | batch | context | MB read | median us | graph us/step | graph GB/s "
                  "| graph % read | SDPA graph us/step | speedup (graph) | speedup (single) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        by_shape = lambda r: (r["batch"], r["context"])
        mine = sorted((r for r in rows if layout_of(r) == layout), key=lambda r: (order[series_name(r)], *by_shape(r)))
        for r in mine + sorted((p for p in peer_by_shape.values() if layout_of(p) == layout), key=by_shape):
            head = f"| {r['format']} | {r['kernel']} | {r['batch']} | {r['context']} | {r['bytes_read'] / 1e6:.1f} |"
            if not ok(r):
                lines.append(f"{head} {r['status']} | | | | | | |")
                continue
            is_peer = r["kernel"].startswith("sdpa")
            p = None if is_peer else peer_by_shape.get(shape_of(r))
            lines.append(f"{head} {fmt(r['median_us'])} | {fmt(r['graph_us_per_step'])} | "
                         f"{fmt(r['graph_gbs'], '.0f')} | {fmt(r['graph_pct_read_bw'], '.1f', '%')} | "
                         f"{'' if is_peer else fmt(p['graph_us_per_step'] if ok(p) else None)} | "
                         f"{'' if is_peer else fmt(speedup(p, r, 'graph_us_per_step'), '.2f', 'x')} | "
                         f"{'' if is_peer else fmt(speedup(p, r, 'median_us'), '.2f', 'x')} |")
        lines.append("")
    return "\n".join(lines)


def plot(tqkv, peer_by_shape, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in tqkv["rows"] if ok(r) and r.get("graph_pct_read_bw") is not None]
    if not rows:
        return False
    layouts = list(dict.fromkeys(layout_of(r) for r in tqkv["rows"]))
    batches = sorted({r["batch"] for r in tqkv["rows"]})
    series = list(dict.fromkeys(series_name(r) for r in tqkv["rows"]))
    colors = {s: plt.cm.tab10(i % 10) for i, s in enumerate(series)}
    contexts = sorted({r["context"] for r in tqkv["rows"]})
    height = 2.1 * len(layouts) + 0.7  # 0.7 inch on top for the title and the legend
    fig, axes = plt.subplots(len(layouts), 2 * len(batches), figsize=(2.6 * 2 * len(batches), height),
                             squeeze=False, sharex=True)
    for li, layout in enumerate(layouts):
        for bi, batch in enumerate(batches):
            bw_ax, up_ax = axes[li][bi], axes[li][len(batches) + bi]
            for s in series:
                pts = sorted((r["context"], r["graph_pct_read_bw"], speedup(peer_by_shape.get(shape_of(r)), r,
                                                                             "graph_us_per_step"))
                             for r in rows if series_name(r) == s and layout_of(r) == layout and r["batch"] == batch)
                if not pts:
                    continue
                bw_ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, color=colors[s], label=s)
                ups = [(p[0], p[2]) for p in pts if p[2] is not None]
                if ups:
                    up_ax.plot([u[0] for u in ups], [u[1] for u in ups], "o-", ms=3, color=colors[s], label=s)
            peer_pts = sorted((p["context"], p["graph_pct_read_bw"]) for p in peer_by_shape.values()
                              if ok(p) and p.get("graph_pct_read_bw") is not None and layout_of(p) == layout
                              and p["batch"] == batch)
            if peer_pts:
                bw_ax.plot(*zip(*peer_pts), "k--", lw=1, label="SDPA f16")
            up_ax.axhline(1.0, color="k", lw=0.8, ls=":")
            d, qh, kvh = layout
            bw_ax.set_title(f"d{d} {qh}/{kvh} b{batch}: % read bw", fontsize=8)
            up_ax.set_title(f"d{d} {qh}/{kvh} b{batch}: x SDPA", fontsize=8)
            for ax in (bw_ax, up_ax):
                ax.set_xscale("log", base=2)
                ax.set_xticks(contexts, [f"{c // 1024}k" if c >= 1024 else str(c) for c in contexts])
                ax.minorticks_off()
                ax.tick_params(labelsize=7)
                ax.grid(alpha=0.3)
            bw_ax.set_ylim(bottom=0)
    for ax in axes[-1]:
        ax.set_xlabel("context (tokens)", fontsize=8)
    handles, labels = {}, {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.suptitle(f"{tqkv['device']}: graph-replay time per decode step; left: % of read bandwidth "
                 f"({tqkv['read_gbs']:.0f} GB/s), right: speedup over SDPA fp16", fontsize=9, y=1 - 0.05 / height)
    fig.legend(list(handles.values()), list(handles.keys()), loc="upper center", ncol=min(len(handles), 8),
               fontsize=8, frameon=False, bbox_to_anchor=(0.5, 1 - 0.3 / height))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / height))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tqkv", required=True, help="bench_cuda --json output")
    ap.add_argument("--peer", help="peer_sdpa.py output of the same run")
    ap.add_argument("--name", required=True, help="base name of the .md and .png written")
    ap.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "bench", "results"))
    args = ap.parse_args()
    tqkv = load(args.tqkv)
    peer = load(args.peer) if args.peer else None
    peer_by_shape = {shape_of(r): r for r in peer["rows"]} if peer else {}
    os.makedirs(args.out_dir, exist_ok=True)
    md_path = os.path.join(args.out_dir, args.name + ".md")
    png_path = os.path.join(args.out_dir, args.name + ".png")
    text = markdown(tqkv, peer, peer_by_shape, args.name)
    plotted = plot(tqkv, peer_by_shape, png_path)
    if plotted:
        text += f"\n![{args.name}]({args.name}.png)\n"
    with open(md_path, "w") as f:
        f.write(text)
    print(f"wrote {md_path}" + (f" and {png_path}" if plotted else " (no timed rows: no plot)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
