#!/usr/bin/env python3
"""Independent check of tqkv's llama runtime and tokenizer on a GGUF model.

  scripts/eval/check_logits.py MODEL.gguf DUMP.bin TEXT [--tokens-only]

DUMP.bin comes from `tqkv perplexity ... --dump-logits DUMP.bin` (int32 n_tokens, int32 count,
int32 vocab, int32 tokens[n_tokens], float32 logits[count][vocab]).

1. Tokenizer: the Hugging Face `tokenizers` library, given the file's vocabulary and merges and
   SmolLM2's pre-tokenizer (Digits(individual) + ByteLevel regex), encodes TEXT; the ids must match
   tqkv's exactly.
2. Logits: a float64 numpy forward pass over the first `count` tokens, written from the Hugging
   Face llama definition rather than from tqkv's code. Weights come from the PyPI `gguf` package's
   dequantizer; Q and K rows are un-permuted back to the Hugging Face order (inverting
   llama.cpp's convert_hf_to_gguf permute) and RoPE is applied as HF's rotate_half, so this also
   checks tqkv's reading of the RoPE layout. Prints the max abs logit difference.
"""
import argparse
import sys

import numpy as np


def read_dump(path):
    raw = np.fromfile(path, dtype=np.uint8)
    n_tokens, count, vocab = np.frombuffer(raw[:12].tobytes(), dtype="<i4")
    tokens = np.frombuffer(raw[12:12 + 4 * n_tokens].tobytes(), dtype="<i4")
    logits = np.frombuffer(raw[12 + 4 * n_tokens:].tobytes(), dtype="<f4").reshape(count, vocab)
    return tokens, logits


def field(reader, key):
    f = reader.fields[key]
    return f.contents()


def check_tokenizer(reader, text, ours):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(field(reader, "tokenizer.ggml.tokens"))}
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    theirs = np.array(tok.encode(text).ids, dtype=np.int32)
    n = min(len(theirs), len(ours))
    diff = np.nonzero(theirs[:n] != ours[:n])[0]
    first = int(diff[0]) if len(diff) else (n if len(theirs) != len(ours) else -1)
    print(f"tokenizer: tqkv {len(ours)} ids, HF tokenizers {len(theirs)} ids, "
          f"first difference at {first if first >= 0 else 'none'}")
    if first >= 0:
        lo = max(0, first - 3)
        print("  tqkv:", ours[lo:first + 5].tolist(), "\n  HF:  ", theirs[lo:first + 5].tolist())
    return first < 0


def weights(reader):
    from gguf import dequantize
    out = {}
    for t in reader.tensors:
        arr = dequantize(t.data, t.tensor_type).astype(np.float64)
        out[t.name] = arr.reshape([int(d) for d in reversed(t.shape)])
    return out


def unpermute(w, n_head):
    # llama.cpp stores W.reshape(n_head, 2, hd/2, in).swapaxes(1, 2); undo it.
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def forward(reader, tokens):
    cfg = {k: field(reader, "llama." + k) for k in (
        "block_count", "embedding_length", "attention.head_count", "attention.head_count_kv",
        "rope.freq_base", "attention.layer_norm_rms_epsilon")}
    n_layer, d_model = cfg["block_count"], cfg["embedding_length"]
    n_head, n_kv = cfg["attention.head_count"], cfg["attention.head_count_kv"]
    hd, base, eps = d_model // n_head, cfg["rope.freq_base"], cfg["attention.layer_norm_rms_epsilon"]
    W = weights(reader)
    T = len(tokens)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    inv_freq = 1.0 / base ** (np.arange(0, hd, 2) / hd)
    ang = np.outer(np.arange(T), inv_freq)
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):  # x: [T, heads, hd], HF rotate_half
        rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
        return x * cos[:, None, :] + rot * sin[:, None, :]

    x = W["token_embd.weight"][tokens]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(n_layer):
        p = f"blk.{l}."
        h = rms(x, W[p + "attn_norm.weight"])
        q = (h @ unpermute(W[p + "attn_q.weight"], n_head).T).reshape(T, n_head, hd)
        k = (h @ unpermute(W[p + "attn_k.weight"], n_kv).T).reshape(T, n_kv, hd)
        v = (h @ W[p + "attn_v.weight"].T).reshape(T, n_kv, hd)
        q, k = rope(q), rope(k)
        rep = n_head // n_kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", att, v).reshape(T, d_model)
        x = x + o @ W[p + "attn_output.weight"].T
        h = rms(x, W[p + "ffn_norm.weight"])
        g = h @ W[p + "ffn_gate.weight"].T
        u = h @ W[p + "ffn_up.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ W[p + "ffn_down.weight"].T
    out_w = W["output.weight"] if "output.weight" in W else W["token_embd.weight"]
    return rms(x, W["output_norm.weight"]) @ out_w.T


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("dump")
    ap.add_argument("text")
    ap.add_argument("--tokens-only", action="store_true")
    args = ap.parse_args()
    from gguf import GGUFReader

    reader = GGUFReader(args.model)
    tokens, ours = read_dump(args.dump)
    with open(args.text, encoding="utf-8") as f:
        ok = check_tokenizer(reader, f.read(), tokens)
    if not args.tokens_only:
        count = ours.shape[0]
        ref = forward(reader, tokens[:count].astype(np.int64))
        diff = np.abs(ref - ours)
        scale = np.abs(ref).max()
        top1 = (ref.argmax(-1) == ours.argmax(-1)).mean()
        print(f"logits: {count} tokens x {ref.shape[1]}: max |diff| {diff.max():.3e} "
              f"(max |logit| {scale:.2f}), mean |diff| {diff.mean():.3e}, "
              f"per-token max |diff| {np.array2string(diff.max(-1)[:8], precision=2)}..., "
              f"top-1 agreement {top1:.3f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
