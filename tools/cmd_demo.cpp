// `tqkv demo`: the main job on an embedded default. Fills a cache with realistic synthetic keys and
// values (heavy tails, outlier channels), compresses it in each format, runs decode attention on
// the compressed bytes and prints memory saved, error against dense fp64 attention, and time.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <vector>

#include <fmt/format.h>

#include "eval/quality.hpp"
#include "tools/commands.hpp"
#include "tqkv/tqkv.hpp"

namespace tqkv::tools {
namespace {

struct DemoOptions {
  std::vector<std::string> formats = {"f16", "k8v4", "tq4", "tq3", "tq2"};
  std::string data = "outliers";
  int tokens = 4096;
  int batch = 2;
  int q_heads = 32;
  int kv_heads = 8;
  int head_dim = 128;
  int repeats = 5;
  uint64_t seed = 2026;
};

double median_ms(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

template <typename F>
double time_ms(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

void run(const DemoOptions& o) {
  eval::Shape shape;
  shape.batch = o.batch;
  shape.q_heads = o.q_heads;
  shape.kv_heads = o.kv_heads;
  shape.head_dim = o.head_dim;
  shape.kv_len = o.tokens;
  const eval::DataKind kind = eval::parse_data_kind(o.data);
  std::vector<KvFormat> formats;  // parsed up front: a typo fails before any work
  for (const std::string& name : o.formats) formats.push_back(parse_kv_format(name));
  fmt::print("tqkv demo: {} sequences x {} tokens, {} query / {} KV heads, head dim {}, {} data "
             "(seed {})\n",
             o.batch, o.tokens, o.q_heads, o.kv_heads, o.head_dim, eval::data_kind_name(kind),
             o.seed);
  const eval::SyntheticKv data = eval::make_synthetic_kv(kind, shape, o.seed);
  const int d = o.head_dim;
  const std::size_t per_seq = static_cast<std::size_t>(o.tokens) * o.kv_heads * d;
  const std::size_t out_per_seq = static_cast<std::size_t>(o.q_heads) * d;

  // Dense fp64 attention on the original K/V: the yardstick.
  DecodeParams params;
  params.q_heads = o.q_heads;
  params.splits = 0;
  std::vector<double> dense(out_per_seq * o.batch);
  for (int b = 0; b < o.batch; ++b)
    dense_decode_attention(&data.q[b * out_per_seq], &data.k[b * per_seq], &data.v[b * per_seq],
                           o.tokens, o.q_heads, o.kv_heads, d, params, &dense[b * out_per_seq]);

  const double fp16_bytes = static_cast<double>(o.batch) * o.tokens * o.kv_heads * d * 2 * 2;
  fmt::print("\n{:>7} {:>11} {:>7} {:>12} {:>9} {:>12} {:>12}\n", "format", "cache", "saved",
             "rel. error", "cosine", "append", "attention");
  for (const KvFormat format : formats) {
    CacheConfig cc;
    cc.batch = o.batch;
    cc.kv_heads = o.kv_heads;
    cc.head_dim = d;
    cc.capacity = o.tokens;
    cc.format = format;
    KvCache cache(cc);
    cache.set_encoder(fast_cpu_encoder());
    const double append_ms = time_ms([&] {
      for (int b = 0; b < o.batch; ++b)
        cache.append(b, &data.k[b * per_seq], &data.v[b * per_seq], o.tokens);
    });
    std::vector<float> out(out_per_seq * o.batch);
    decode_attention(cache.view(), data.q.data(), out.data(), params);  // warm-up
    std::vector<double> runs;
    for (int r = 0; r < o.repeats; ++r)
      runs.push_back(time_ms([&] { decode_attention(cache.view(), data.q.data(), out.data(), params); }));
    const eval::Metrics m = eval::compare_outputs(out, dense, d);
    const double bytes = static_cast<double>(cache.storage_bytes());
    fmt::print("{:>7} {:>8.1f} MB {:>6.2f}x {:>11.3f}% {:>9.5f} {:>9.1f} ms {:>9.3f} ms\n",
               kv_format_name(cc.format), bytes / 1e6, fp16_bytes / bytes,
               100 * m.rel_l2, m.mean_cosine,
               append_ms, median_ms(runs));
  }
  fmt::print("\ncache: codes + scales held (a 4-byte pair of bf16 scales per position, unused for f16); saved: "
             "against an fp16 K/V cache ({:.1f} MB).\n"
             "rel. error: ||attention output - dense fp64 attention on the original K/V|| / "
             "||dense||; cosine: mean over heads.\n"
             "append: quantize-on-write of all tokens; attention: one decode step for every "
             "sequence (fast CPU backend, median of {}).\n",
             fp16_bytes / 1e6, o.repeats);
}

}  // namespace

void add_demo_command(CLI::App& app) {
  auto o = std::make_shared<DemoOptions>();
  CLI::App* cmd = app.add_subcommand(
      "demo", "Compress a realistic synthetic KV cache in each format and compare decode "
              "attention on the compressed bytes with dense fp64 attention: memory, error, time.");
  cmd->add_option("-f,--formats", o->formats, "KV formats (f16, tq8, tq4, tq3, tq2, k8v4, k4v2, ...)")
      ->capture_default_str();
  cmd->add_option("--data", o->data, "synthetic data: gaussian, student_t or outliers")
      ->capture_default_str();
  cmd->add_option("-n,--tokens", o->tokens, "tokens per sequence")->capture_default_str();
  cmd->add_option("-b,--batch", o->batch, "sequences")->capture_default_str();
  cmd->add_option("--q-heads", o->q_heads, "query heads")->capture_default_str();
  cmd->add_option("--kv-heads", o->kv_heads, "KV heads")->capture_default_str();
  cmd->add_option("-d,--head-dim", o->head_dim, "head dim")->capture_default_str();
  cmd->add_option("-r,--repeats", o->repeats, "timed attention runs")->capture_default_str();
  cmd->add_option("--seed", o->seed, "seed of the synthetic data")->capture_default_str();
  cmd->callback([o] { run(*o); });
}

void add_quality_command(CLI::App& app) {
  struct Options {
    eval::Shape shape;
    uint64_t seed = 7;
    std::string scale_rule{scale_rule_name(kDefaultScaleRule)};
    std::string codebook = "gaussian";
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "quality", "Print the quality table: attention-output error of every format against dense "
                 "fp64 attention, on Gaussian, heavy-tailed and outlier synthetic data, with the "
                 "baselines (uniform 4-bit per vector; tq4 without sign flips).");
  cmd->add_option("-n,--tokens", o->shape.kv_len, "tokens per sequence")->capture_default_str();
  cmd->add_option("-b,--batch", o->shape.batch, "sequences")->capture_default_str();
  cmd->add_option("--q-heads", o->shape.q_heads, "query heads")->capture_default_str();
  cmd->add_option("--kv-heads", o->shape.kv_heads, "KV heads")->capture_default_str();
  cmd->add_option("-d,--head-dim", o->shape.head_dim, "head dim")->capture_default_str();
  cmd->add_option("--seed", o->seed, "seed of the synthetic data")->capture_default_str();
  cmd->add_option("--scale-rule", o->scale_rule, "norm or least_squares")->capture_default_str();
  cmd->add_option("--codebook", o->codebook, "gaussian or beta")->capture_default_str();
  cmd->callback([o] {
    eval::QualityOptions q;
    q.scale_rule = parse_scale_rule(o->scale_rule);
    q.codebook = parse_codebook_kind(o->codebook);
    eval::print_quality_table(std::cout, o->shape, o->seed, q);
  });
}

}  // namespace tqkv::tools
