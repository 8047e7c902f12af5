// Decode attention on the CPU: the fast backend over every cache format (f16 included), the
// scalar reference, and in the same run the two ceilings a decode step can hit on this machine:
// memory read bandwidth (a threaded sum over a large buffer) and fp32 FMA throughput.
//
// Shape (issue 5): head_dim 128, 32 query / 8 KV heads, batch 1. Counters:
//   read       compressed cache bytes read per second (codes + scales, K and V; "G/s" = GB/s)
//   MB         those bytes per call
//   fma        fp32 multiply-adds per second (BM_fma_peak)
// Every timed iteration starts with caches cold: a 64 MiB buffer is streamed between
// iterations (timing paused), as the other layers' caches would between two decode steps.
//
//   bench_cpu_decode --benchmark_min_time=0.5
#include <benchmark/benchmark.h>
#include <omp.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cpu/fast/fast.hpp"
#include "tqkv/attention.hpp"
#include "tqkv/cache.hpp"

namespace {

using namespace tqkv;

constexpr int kHeadDim = 128;
constexpr int kKvHeads = 8;
constexpr int kQHeads = 32;
constexpr std::size_t kFlushBytes = std::size_t{64} << 20;  // > 8 MiB L3 by far

// Streams a buffer larger than every cache level so the next iteration starts cold. One
// thread on purpose: idle OpenMP workers spin for a while after a parallel region, which would
// add to the process CPU time of the next timed call.
void flush_caches() {
  static std::vector<uint64_t> junk(kFlushBytes / sizeof(uint64_t), 1);
  uint64_t sum = 0;
  for (std::size_t i = 0; i < junk.size(); i += 8) sum += junk[i];
  benchmark::DoNotOptimize(sum);
}

// One cache per (format, tokens), filled once with random tokens and kept for the whole run.
struct Fixture {
  std::unique_ptr<KvCache> cache;
  std::vector<float> q, out;
};
Fixture& fixture(KvFormat format, int tokens) {
  static std::map<std::pair<std::string, int>, Fixture> all;
  Fixture& f = all[{kv_format_name(format), tokens}];
  if (!f.cache) {
    CacheConfig cfg;
    cfg.batch = 1;
    cfg.kv_heads = kKvHeads;
    cfg.head_dim = kHeadDim;
    cfg.capacity = tokens;
    cfg.format = format;
    f.cache = std::make_unique<KvCache>(cfg);
    std::mt19937_64 rng(42);
    std::normal_distribution<float> normal;
    const int chunk = 256;
    std::vector<float> k(static_cast<std::size_t>(chunk) * kKvHeads * kHeadDim), v(k.size());
    for (int t = 0; t < tokens; t += chunk) {
      for (auto& x : k) x = normal(rng);
      for (auto& x : v) x = normal(rng);
      f.cache->append(0, k.data(), v.data(), std::min(chunk, tokens - t));
    }
    f.q.resize(static_cast<std::size_t>(kQHeads) * kHeadDim);
    for (auto& x : f.q) x = normal(rng);
    f.out.resize(f.q.size());
  }
  return f;
}

double bytes_read(KvFormat format, int tokens) {
  return static_cast<double>(tokens) * kKvHeads *
         static_cast<double>(kv_bytes_per_position(format, kHeadDim));
}

enum class Kernel { fast, reference };

// args: tokens, threads
void BM_decode(benchmark::State& state, KvFormat format, Kernel kernel) {
  const int tokens = static_cast<int>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  Fixture& f = fixture(format, tokens);
  const CacheView view = f.cache->view();
  DecodeParams p;
  p.q_heads = kQHeads;
  p.splits = 0;
  for (auto _ : state) {
    state.PauseTiming();
    flush_caches();
    state.ResumeTiming();
    if (kernel == Kernel::fast)
      cpu_fast::decode_attention(view, f.q.data(), f.out.data(), p, threads);
    else
      decode_attention_reference(view, f.q.data(), f.out.data(), p);
    benchmark::ClobberMemory();
  }
  state.counters["read"] = benchmark::Counter(bytes_read(format, tokens),
                                              benchmark::Counter::kIsIterationInvariantRate);
  state.counters["MB"] = bytes_read(format, tokens) * 1e-6;
  state.SetLabel(kv_format_name(format) + (kernel == Kernel::fast
                                               ? " fast " + cpu_fast::active_target()
                                               : std::string(" reference")));
}

// Memory read bandwidth: each thread sums its share of a 1 GiB buffer (4 independent sums so
// the adds never limit the loads).
void BM_memory_read(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  static std::vector<uint64_t> buffer(std::size_t{1} << 27, 3);  // 1 GiB
  const std::size_t n = buffer.size();
  for (auto _ : state) {
    uint64_t total = 0;
#pragma omp parallel for num_threads(threads) reduction(+ : total) schedule(static)
    for (std::size_t i = 0; i < n; i += 4)
      total += buffer[i] + buffer[i + 1] + buffer[i + 2] + buffer[i + 3];
    benchmark::DoNotOptimize(total);
  }
  state.counters["read"] = benchmark::Counter(static_cast<double>(n * sizeof(uint64_t)),
                                              benchmark::Counter::kIsIterationInvariantRate);
}

#if defined(__x86_64__)
// fp32 FMA throughput with 256-bit vectors: 10 independent chains per thread (more than
// latency x ports on current x86 cores), reported as multiply-adds per second.
// Each chain starts from a different value: with equal starts GCC proved the ten chains equal,
// kept one, and the probe reported ten times one chain's latency-bound rate (40 instead of ~20
// GFMA/s per core on the Zen 1 build machine).
__attribute__((target("avx2,fma"))) float fma_chains(long iterations) {
  __m256 a0 = _mm256_set1_ps(1.0f), a1 = _mm256_set1_ps(1.1f), a2 = _mm256_set1_ps(1.2f),
         a3 = _mm256_set1_ps(1.3f), a4 = _mm256_set1_ps(1.4f), a5 = _mm256_set1_ps(1.5f),
         a6 = _mm256_set1_ps(1.6f), a7 = _mm256_set1_ps(1.7f), a8 = _mm256_set1_ps(1.8f),
         a9 = _mm256_set1_ps(1.9f);
  const __m256 b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-4f);
  for (long k = 0; k < iterations; ++k) {
    a0 = _mm256_fmadd_ps(a0, b, c);
    a1 = _mm256_fmadd_ps(a1, b, c);
    a2 = _mm256_fmadd_ps(a2, b, c);
    a3 = _mm256_fmadd_ps(a3, b, c);
    a4 = _mm256_fmadd_ps(a4, b, c);
    a5 = _mm256_fmadd_ps(a5, b, c);
    a6 = _mm256_fmadd_ps(a6, b, c);
    a7 = _mm256_fmadd_ps(a7, b, c);
    a8 = _mm256_fmadd_ps(a8, b, c);
    a9 = _mm256_fmadd_ps(a9, b, c);
  }
  const __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                                 _mm256_add_ps(_mm256_add_ps(a4, a5),
                                               _mm256_add_ps(_mm256_add_ps(a6, a7),
                                                             _mm256_add_ps(a8, a9))));
  return _mm256_cvtss_f32(s);
}

void BM_fma_peak(benchmark::State& state) {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    state.SkipWithError("no AVX2+FMA");
    return;
  }
  const int threads = static_cast<int>(state.range(0));
  constexpr long kIterations = 20'000'000;
  for (auto _ : state) {
    float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    sink += fma_chains(kIterations);
    benchmark::DoNotOptimize(sink);
  }
  state.counters["fma"] = benchmark::Counter(double{kIterations} * 10 * 8 * threads,
                                             benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_fma_peak)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
#endif

BENCHMARK(BM_memory_read)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

const KvFormat kTq4{Format::tq4, Format::tq4};
const KvFormat kTq8{Format::tq8, Format::tq8};
const KvFormat kTq3{Format::tq3, Format::tq3};
const KvFormat kTq2{Format::tq2, Format::tq2};
const KvFormat kK8V4{Format::tq8, Format::tq4};
const KvFormat kF16{Format::f16, Format::f16};

void decode_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"tokens", "threads"});
  for (const int tokens : {4096, 16384}) b->Args({tokens, 2});
  b->Args({16384, 1});  // one core: how the time scales with cores says which bound is hit
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

// One thread, timed by process CPU time instead of the wall clock: on a machine shared with
// other jobs this stays close to the unloaded time (no waiting for a descheduled thread), and
// the work splits evenly over cores (sequences x KV heads x splits), so 2-core time ~ half.
void cpu_time_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"tokens", "threads"});
  for (const int tokens : {4096, 16384}) b->Args({tokens, 1});
  b->MeasureProcessCPUTime()->Unit(benchmark::kMillisecond);
}

#define TQKV_DECODE_BENCH(name, format)                                                \
  BENCHMARK_CAPTURE(BM_decode, name, format, Kernel::fast)->Apply(decode_args);        \
  BENCHMARK_CAPTURE(BM_decode, name##_cpu_time, format, Kernel::fast)->Apply(cpu_time_args)

TQKV_DECODE_BENCH(tq4, kTq4);
TQKV_DECODE_BENCH(tq8, kTq8);
TQKV_DECODE_BENCH(tq3, kTq3);
TQKV_DECODE_BENCH(tq2, kTq2);
TQKV_DECODE_BENCH(k8v4, kK8V4);
TQKV_DECODE_BENCH(f16, kF16);
// The scalar fp64 reference (one thread, no SIMD) is over 10x slower: 1k and 4k tokens, 2 runs.
BENCHMARK_CAPTURE(BM_decode, tq4_reference, kTq4, Kernel::reference)
    ->ArgNames({"tokens", "threads"})
    ->Args({1024, 1})
    ->Args({4096, 1})
    ->Iterations(2)
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
