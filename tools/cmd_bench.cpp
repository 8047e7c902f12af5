// `tqkv bench`: times decode attention on this machine's CPU backends for one shape and prints
// the median time per decode step and GB/s over the compressed bytes actually read.
// GPU timing is bench_cuda (cuda/bench_cuda.cpp): it needs device-side cache copies for a cold L2,
// CUDA events and graph replays, and times the PyTorch SDPA peer alongside
// (scripts/gpu-bench/run.sh); `--backend cuda` here says so rather than timing a second way.
#include <algorithm>
#include <chrono>
#include <random>
#include <vector>

#include <fmt/format.h>

#include "tools/commands.hpp"
#include "tqkv/tqkv.hpp"

namespace tqkv::tools {
namespace {

struct BenchOptions {
  std::vector<std::string> formats = {"f16", "tq8", "k8v4", "tq4", "tq3", "tq2"};
  int tokens = 4096;
  int batch = 1;
  int q_heads = 32;
  int kv_heads = 8;
  int head_dim = 128;
  int repeats = 20;
  int threads = 0;
  std::string backend = "cpu";
  uint64_t seed = 1;
};

// Where the GPU benchmark is, for `--backend cuda`.
constexpr const char* kGpuBenchmark =
    "the GPU benchmark is bench_cuda (built with -DTQKV_CUDA=ON): `BUILD/cuda/bench_cuda --grid issue|full|quick "
    "[--formats tq4,k8v4,...] [--json out.json]`; scripts/gpu-bench/run.sh OUTDIR BINDIR runs it with the PyTorch "
    "SDPA peer and scripts/gpu-bench/report.py writes bench/results/ (bench/results/README.md)";

Backend parse_backend(const std::string& s) {
  if (s == "cpu") return Backend::cpu;
  if (s == "reference" || s == "cpu_reference") return Backend::cpu_reference;
  if (s == "cuda") raise(Status::unsupported, fmt::format("--backend cuda: {}", kGpuBenchmark));
  raise(Status::invalid_argument,
        fmt::format("--backend '{}' is not a backend of this command (expected cpu or reference; cuda "
                    "says where the GPU benchmark is)",
                    s));
}

void run(const BenchOptions& o) {
  const Backend backend = parse_backend(o.backend);
  fmt::print("decode attention, {} backend: batch {}, {} tokens, {} query / {} KV heads, d = {}, "
             "median of {}\n",
             o.backend, o.batch, o.tokens, o.q_heads, o.kv_heads, o.head_dim, o.repeats);
  fmt::print("{:>8} {:>12} {:>12} {:>10}\n", "format", "bytes read", "median", "GB/s");
  std::mt19937 rng(static_cast<uint32_t>(o.seed));
  std::normal_distribution<float> normal;
  const std::size_t per_token = static_cast<std::size_t>(o.kv_heads) * o.head_dim;
  std::vector<float> k(per_token * o.tokens), v(k.size());
  std::vector<float> q(static_cast<std::size_t>(o.batch) * o.q_heads * o.head_dim);
  for (auto* x : {&k, &v, &q})
    for (float& e : *x) e = normal(rng);
  std::vector<float> out(q.size());
  for (const std::string& name : o.formats) {
    CacheConfig cc;
    cc.batch = o.batch;
    cc.kv_heads = o.kv_heads;
    cc.head_dim = o.head_dim;
    cc.capacity = o.tokens;
    cc.format = parse_kv_format(name);
    KvCache cache(cc);
    for (int b = 0; b < o.batch; ++b) cache.append(b, k.data(), v.data(), o.tokens);
    DecodeParams p;
    p.q_heads = o.q_heads;
    p.splits = 0;
    ExecContext ctx;
    ctx.backend = backend;
    ctx.threads = o.threads;
    std::vector<double> ms;
    decode_attention(cache.view(), q.data(), out.data(), p, ctx);  // warm-up
    for (int r = 0; r < o.repeats; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      decode_attention(cache.view(), q.data(), out.data(), p, ctx);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                       .count());
    }
    std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
    const double median = ms[ms.size() / 2];
    const double bytes = static_cast<double>(o.batch) * o.kv_heads * o.tokens *
                         static_cast<double>(kv_bytes_per_position(cc.format, o.head_dim));
    fmt::print("{:>8} {:>9.1f} MB {:>9.3f} ms {:>10.2f}\n", kv_format_name(cc.format), bytes / 1e6,
               median, bytes / median / 1e6);
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Time decode attention on the CPU for each format: median per decode step and GB/s "
               "over the compressed bytes read (codes + scales of every visible position). "
               "GPU: bench_cuda (`--backend cuda` prints how to run it).");
  cmd->add_option("-f,--formats", o->formats, "KV formats to time")->capture_default_str();
  cmd->add_option("-n,--tokens", o->tokens, "tokens in the cache")->capture_default_str();
  cmd->add_option("-b,--batch", o->batch, "sequences")->capture_default_str();
  cmd->add_option("--q-heads", o->q_heads, "query heads")->capture_default_str();
  cmd->add_option("--kv-heads", o->kv_heads, "KV heads")->capture_default_str();
  cmd->add_option("-d,--head-dim", o->head_dim, "head dim")->capture_default_str();
  cmd->add_option("-r,--repeats", o->repeats, "timed runs (median reported)")->capture_default_str();
  cmd->add_option("-t,--threads", o->threads, "CPU threads, 0 = all")->capture_default_str();
  cmd->add_option("--backend", o->backend,
                  "cpu (SIMD + threads) or reference (scalar); cuda points to the GPU benchmark")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "seed of the random inputs")->capture_default_str();
  cmd->callback([o] { run(*o); });
}

}  // namespace tqkv::tools
