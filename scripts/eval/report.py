#!/usr/bin/env python3
"""Tables and the plot of docs/real-model.md from scripts/eval/run_eval.sh's result folder.

  scripts/eval/report.py [RESULTS_DIR] [--plot docs/real-model.png]

Prints a markdown table (perplexity, delta vs f16, KV bytes per token, first greedy token that
differs from f16 per prompt) and draws perplexity delta against KV bytes per token.
"""
import argparse
import glob
import json
import math
import os

FAMILY = {  # how each result is drawn and grouped
    "tq": ("tqkv (random signs)", "tab:blue", "o"),
    "noflip": ("tqkv without sign flips", "tab:orange", "s"),
    "baseline": ("baselines (q4_0, KIVI-2)", "tab:red", "^"),
    "ref": ("f16", "tab:gray", "D"),
    "mixed": ("tqkv variants (per-layer formats, scale, codebook)", "tab:green", "P"),
    "keyside": ("tqkv + key smoothing / recent f16 window", "tab:purple", "v"),
}


def family(kv):
    if "-smooth" in kv or "-recent" in kv:
        return "keyside"
    if kv.endswith("-noflip"):
        return "noflip"
    if kv in ("q4_0", "kivi2"):
        return "baseline"
    if kv in ("f16", "f32"):
        return "ref"
    return "tq"


def load(results):
    ppl = {}
    for path in glob.glob(os.path.join(results, "ppl-*.json")):
        with open(path) as f:
            r = json.load(f)
        name = r["kv"] + (f" [{r['kv_layers']}]" if r.get("kv_layers") else "")
        name += f" ({r['variant']})" if r.get("variant") else ""
        ppl[name] = r
    gen = {}
    for path in glob.glob(os.path.join(results, "gen-*.json")):
        prompt, kv = os.path.basename(path)[4:-5].split("-", 1)
        with open(path) as f:
            gen.setdefault(kv, {})[int(prompt)] = json.load(f)
    return ppl, gen


def short_label(name):
    """'tq4-center [2,9-11=k8v4-center] (codebook beta)' -> 'tq4-center +k8 keys on 4 layers (beta)'."""
    if " [" not in name:
        return name.replace("(codebook beta)", "(beta)").replace("(scale norm)", "(norm scale)")
    base, rest = name.split(" [", 1)
    layers, tail = rest.split("]", 1)
    count = 0
    for group in layers.split(";"):
        for item in group.split("=")[0].split(","):
            lo, _, hi = item.partition("-")
            count += int(hi or lo) - int(lo) + 1
    return f"{base} +k8 keys on {count} layers" + tail.replace("(codebook beta)", "(beta)")


def kv_bytes(r):
    """Bytes per token with the fixed bytes (recent window, smoothing/centering vectors, KIVI's
    raw key group) amortised over ctx; results written before that field give the per-token part."""
    return r.get("kv_bytes_per_token_at_ctx", r["kv_bytes_per_token"])


def first_divergence(ids, ref):
    for i, (a, b) in enumerate(zip(ids, ref)):
        if a != b:
            return str(i)
    return "=" if len(ids) == len(ref) else str(min(len(ids), len(ref)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="?", default="docs/real-model-results")
    ap.add_argument("--plot", default="docs/real-model.png")
    args = ap.parse_args()
    ppl, gen = load(args.results)
    base = ppl.get("f16")
    prompts = sorted({p for g in gen.values() for p in g})
    order = sorted(ppl, key=lambda k: (-kv_bytes(ppl[k]), k))
    head = ("| KV | bytes/token | vs f16 | perplexity | Δ vs f16 | top-1 | "
            + " | ".join(f"gen {p}: 1st diff" for p in prompts) + " |")
    print(head)
    print("|" + "---|" * (6 + len(prompts)))
    for k in order:
        r = ppl[k]
        delta = 100 * (r["perplexity"] / base["perplexity"] - 1) if base else float("nan")
        cells = []
        for p in prompts:
            g, ref = gen.get(k, {}).get(p), gen.get("f16", {}).get(p)
            cells.append(first_divergence(g["ids"], ref["ids"]) if g and ref else "–")
        ratio = kv_bytes(base) / kv_bytes(r) if base else float("nan")
        print(f"| {k} | {kv_bytes(r):.0f} | {ratio:.2f}× | {r['perplexity']:.3f} ± "
              f"{r['perplexity_stderr']:.2f} | {delta:+.2f} % | {100 * r['top1']:.2f} % | "
              + " | ".join(cells) + " |")
    if base:
        r = base
        print(f"\n{r['scored_tokens']} scored tokens, ctx {r['ctx']}, {r['windows']} windows; "
              f"generation: {len(prompts)} prompts, '=' means identical to f16 throughout.")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 5))
    seen = set()
    for k in order:
        r = ppl[k]
        fam = family(k) if " " not in k or family(k) == "keyside" else "mixed"
        label, color, marker = FAMILY[fam]
        delta = 100 * (r["perplexity"] / base["perplexity"] - 1)
        ax.scatter(kv_bytes(r), delta, color=color, marker=marker, s=60,
                   label=None if fam in seen else label, zorder=3)
        seen.add(fam)
        ax.annotate(short_label(k), (kv_bytes(r), delta), textcoords="offset points",
                    xytext=(6, 4), fontsize=7)
    ax.axhline(1.0, color="tab:green", ls="--", lw=1, label="+1 % (goal for tq4)")
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom=-0.5)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:.0f}"))
    ax.set_yscale("symlog", linthresh=2)
    ax.set_xlabel("KV cache bytes per token (30 layers x 3 KV heads, K+V, scales included;\n"
                  "fixed bytes such as a recent window amortised over ctx)")
    ax.set_ylabel("perplexity change vs f16 cache (%)")
    ax.set_title(f"SmolLM2-135M-Instruct on Moby Dick: ctx {base['ctx']}, "
                 f"{base['scored_tokens']} scored tokens")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
