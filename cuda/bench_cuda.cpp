// bench_cuda: times tqkv decode attention on the GPU (and the card's copy bandwidth) for a small
// grid of shapes. Median of many single-launch timings with CUDA events; cold L2 by rotating over
// enough cache copies that each launch reads bytes no earlier launch left in L2. GB/s counts the
// KV bytes the step must read (kv_bytes_per_position: rows + scales).
//
// Each shape is timed as single launches (events around each call: for short kernels this
// includes the host's launch latency) and as CUDA-graph replays of 16 decode steps (time per
// step), for each selected decode kernel. Also times append (quantize-on-write)
// of a 32k-token chunk, counting bytes read (f16 or f32 input) plus bytes written.
//
// usage: bench_cuda [--quick] [--formats tq4,k8v4,f16] [--kernels mma,cuda_core] [--extras] [--reps N] [--copies N]
//   --extras: also d = 256/512, batch 32 and the append throughput
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "backend.hpp"
#include "launch.hpp"
#include "tqkv/cuda.hpp"
#include "tqkv/error.hpp"

namespace {

using namespace tqkv;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "bench_cuda: %s: %s\n", what, cudaGetErrorString(e));
    std::exit(2);
  }
}

// Bytes of rotating copies: several times the L2 (50 MB on an H100), so every launch reads cold data.
constexpr std::size_t kColdBytes = std::size_t{400} << 20;
// --copies N overrides the count (1 = warm L2: tells the fixed cost of a step from cold-memory cost).
std::size_t g_copies_override = 0;
// Device memory the copies may use in total.
constexpr std::size_t kMaxCopiesBytes = std::size_t{24} << 30;
// Random pattern tiled over the cache storage (codes, f16 values, scales).
constexpr std::size_t kPatternBytes = std::size_t{16} << 20;

struct Pattern {
  std::vector<uint8_t> codes, halves, scales;
};

Pattern make_pattern(uint64_t seed) {
  std::mt19937_64 rng(seed);
  Pattern p;
  p.codes.resize(kPatternBytes);
  for (std::size_t i = 0; i < kPatternBytes; i += 8) {
    const uint64_t r = rng();
    std::memcpy(&p.codes[i], &r, 8);
  }
  std::normal_distribution<float> normal;
  std::vector<uint16_t> h(kPatternBytes / 2);
  for (auto& x : h) x = float_to_half(normal(rng));
  p.halves.resize(kPatternBytes);
  std::memcpy(p.halves.data(), h.data(), kPatternBytes);
  std::vector<float> s(kPatternBytes / 4);
  std::uniform_real_distribution<float> uni(0.05f, 0.15f);
  for (auto& x : s) x = uni(rng);
  p.scales.resize(kPatternBytes);
  std::memcpy(p.scales.data(), s.data(), kPatternBytes);
  return p;
}

void tile(const void* dst_const, std::size_t bytes, const std::vector<uint8_t>& pattern) {
  auto* dst = static_cast<uint8_t*>(const_cast<void*>(dst_const));
  for (std::size_t off = 0; off < bytes; off += pattern.size())
    check(cudaMemcpy(dst + off, pattern.data(), std::min(pattern.size(), bytes - off), cudaMemcpyHostToDevice),
          "fill");
}

double median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Device-to-device copy rate, counting bytes read plus written (METHOD.md).
double copy_bandwidth_gbs() {
  const std::size_t bytes = std::size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  check(cudaMalloc(&a, bytes), "malloc copy");
  check(cudaMalloc(&b, bytes), "malloc copy");
  check(cudaMemset(a, 1, bytes), "memset");
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<float> ms;
  for (int i = 0; i < 12; ++i) {
    cudaEventRecord(e0);
    check(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice), "copy");
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float t = 0;
    cudaEventElapsedTime(&t, e0, e1);
    if (i >= 2) ms.push_back(t);
  }
  cudaFree(a);
  cudaFree(b);
  return 2.0 * static_cast<double>(bytes) / (median(ms) * 1e-3) / 1e9;
}

struct Shape {
  std::string format;
  int head_dim, q_heads, kv_heads, batch, context;
};

const char* kernel_name(cuda_detail::DecodeKernel k) {
  switch (k) {
    case cuda_detail::DecodeKernel::mma: return "mma";
    case cuda_detail::DecodeKernel::cuda_core: return "cuda_core";
  }
  return "?";
}

// Median of `reps` event-timed calls of f(i) on `stream`, in microseconds.
template <typename F>
double time_us(cudaStream_t stream, int reps, F&& f) {
  std::vector<cudaEvent_t> ev(2 * reps);
  for (auto& e : ev) cudaEventCreate(&e);
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(ev[2 * i], stream);
    f(i);
    cudaEventRecord(ev[2 * i + 1], stream);
  }
  check(cudaStreamSynchronize(stream), "sync");
  std::vector<float> ms(reps);
  for (int i = 0; i < reps; ++i) cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]);
  for (auto& e : ev) cudaEventDestroy(e);
  return median(ms) * 1e3;
}

void run(const Shape& s, const Pattern& pat, int reps, double copy_gbs,
         const std::vector<cuda_detail::DecodeKernel>& kernels) {
  CacheConfig cfg;
  cfg.batch = s.batch;
  cfg.kv_heads = s.kv_heads;
  cfg.head_dim = s.head_dim;
  cfg.capacity = s.context;
  cfg.format = parse_kv_format(s.format);
  const std::size_t kv_bytes = kv_bytes_per_position(cfg.format, s.head_dim) * std::size_t(s.batch) * s.kv_heads * s.context;
  const std::size_t copies =
      g_copies_override ? g_copies_override
                        : std::clamp<std::size_t>((kColdBytes + kv_bytes - 1) / kv_bytes, 1,
                                                  std::max<std::size_t>(1, kMaxCopiesBytes / kv_bytes));
  std::vector<cuda::DeviceKvCache> caches;
  const std::vector<int64_t> tokens(s.batch, s.context);
  for (std::size_t i = 0; i < copies; ++i) {
    caches.emplace_back(cfg);
    const CacheView v = caches.back().view();
    const std::size_t rows = std::size_t(s.batch) * s.kv_heads * s.context;
    tile(v.k_codes, rows * v.k_row_bytes, is_quantized(cfg.format.key) ? pat.codes : pat.halves);
    tile(v.v_codes, rows * v.v_row_bytes, is_quantized(cfg.format.value) ? pat.codes : pat.halves);
    tile(v.k_scales, rows * 4, pat.scales);
    tile(v.v_scales, rows * 4, pat.scales);
    check(cudaMemcpy(const_cast<int64_t*>(v.tokens), tokens.data(), tokens.size() * 8, cudaMemcpyHostToDevice), "tokens");
  }
  const std::size_t n_q = std::size_t(s.batch) * s.q_heads * s.head_dim;
  float* q = nullptr;
  void* out = nullptr;
  check(cudaMalloc(reinterpret_cast<void**>(&q), n_q * 4), "malloc q");
  check(cudaMalloc(&out, n_q * 4), "malloc out");
  std::vector<float> hq(n_q);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  for (auto& x : hq) x = normal(rng);
  check(cudaMemcpy(q, hq.data(), n_q * 4, cudaMemcpyHostToDevice), "q");

  DecodeParams p;
  p.q_heads = s.q_heads;
  p.splits = 0;
  cudaStream_t stream;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  const ExecContext ctx{Backend::cuda, stream};
  for (const auto kernel : kernels) {
    cuda_detail::select_decode_kernel(kernel);
    for (int i = 0; i < 5; ++i) cuda_backend::decode_attention(caches[i % copies].view(), q, out, p, ctx);
    const double us = time_us(stream, reps, [&](int i) {
      cuda_backend::decode_attention(caches[i % copies].view(), q, out, p, ctx);
    });
    // Graph replay: each graph holds kGraphSteps decode steps over consecutive copies (as a model
    // captures all layers of a step), so the time per step includes the launch gaps inside a
    // graph but not the host's launch latency; graphs are replayed round-robin (cold L2).
    constexpr int kGraphSteps = 16;
    const std::size_t n_graphs = (copies + kGraphSteps - 1) / kGraphSteps;
    std::vector<cudaGraphExec_t> graphs(n_graphs);
    for (std::size_t gi = 0; gi < n_graphs; ++gi) {
      cudaGraph_t graph;
      check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "capture");
      for (int st = 0; st < kGraphSteps; ++st)
        cuda_backend::decode_attention(caches[(gi * kGraphSteps + st) % copies].view(), q, out, p, ctx);
      check(cudaStreamEndCapture(stream, &graph), "end capture");
      check(cudaGraphInstantiate(&graphs[gi], graph, 0), "instantiate");
      cudaGraphDestroy(graph);
    }
    for (std::size_t gi = 0; gi < n_graphs; ++gi) check(cudaGraphLaunch(graphs[gi], stream), "replay");
    const double graph_us =
        time_us(stream, std::max(20, reps / kGraphSteps),
                [&](int i) { check(cudaGraphLaunch(graphs[i % n_graphs], stream), "replay"); }) /
        kGraphSteps;
    for (auto& g : graphs) cudaGraphExecDestroy(g);
    check(cudaGetLastError(), "decode");
    const double gbs = static_cast<double>(kv_bytes) / (us * 1e-6) / 1e9;
    const double graph_gbs = static_cast<double>(kv_bytes) / (graph_us * 1e-6) / 1e9;
    std::printf("| %-6s | %-9s | %4d | %2d/%-2d | %5d | %6d | %9.1f | %9.1f | %7.1f | %5.1f%% | %5.1f%% | %4zu |\n",
                s.format.c_str(), kernel_name(kernel), s.head_dim, s.q_heads, s.kv_heads, s.batch, s.context, us,
                graph_us, gbs, 100.0 * gbs / copy_gbs, 100.0 * graph_gbs / copy_gbs, copies);
    std::fflush(stdout);
  }
  cuda_detail::select_decode_kernel(cuda_detail::DecodeKernel::mma);
  cudaFree(q);
  cudaFree(out);
  cudaStreamDestroy(stream);
}

// Append of one 32k-token chunk to one sequence (8 KV heads, d = 128): bytes read (K and V
// inputs) plus bytes written (codes and scales), over the median time of one append call.
void run_append(const std::string& format, cuda::InputType type, int reps, double copy_gbs) {
  constexpr int kTokens = 32768, kHeads = 8, kDim = 128;
  CacheConfig cfg;
  cfg.batch = 1;
  cfg.kv_heads = kHeads;
  cfg.head_dim = kDim;
  cfg.capacity = kTokens;
  cfg.format = parse_kv_format(format);
  cuda::DeviceKvCache cache(cfg);
  const std::size_t n = std::size_t(kTokens) * kHeads * kDim;
  const std::size_t in_bytes = type == cuda::InputType::f32 ? 4 : 2;
  void *k = nullptr, *v = nullptr;
  check(cudaMalloc(&k, n * in_bytes), "malloc k");
  check(cudaMalloc(&v, n * in_bytes), "malloc v");
  const Pattern pat = make_pattern(0xa99e);
  if (type == cuda::InputType::f32) {
    std::vector<uint8_t> f(kPatternBytes);
    std::mt19937 rng(3);
    std::normal_distribution<float> normal;
    std::vector<float> x(kPatternBytes / 4);
    for (auto& e : x) e = normal(rng);
    std::memcpy(f.data(), x.data(), kPatternBytes);
    tile(k, n * 4, f);
    tile(v, n * 4, f);
  } else {
    tile(k, n * 2, pat.halves);
    tile(v, n * 2, pat.halves);
  }
  cudaStream_t stream;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  const std::size_t written = std::size_t(kTokens) * kHeads * kv_bytes_per_position(cfg.format, kDim);
  const std::size_t bytes = 2 * n * in_bytes + written;
  std::vector<float> ms;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  for (int i = 0; i < reps + 2; ++i) {
    cache.reset(0, stream);
    cudaEventRecord(e0, stream);
    cache.append(0, k, v, kTokens, type, stream);
    cudaEventRecord(e1, stream);
    check(cudaEventSynchronize(e1), "append");
    float t = 0;
    cudaEventElapsedTime(&t, e0, e1);
    if (i >= 2) ms.push_back(t);
  }
  cache.check_appends(stream);
  const double us = median(ms) * 1e3;
  const double gbs = static_cast<double>(bytes) / (us * 1e-6) / 1e9;
  std::printf("| append %-6s | %s input | 32768 x 8 x 128 | %9.1f | %7.1f | %5.1f%% |\n", format.c_str(),
              type == cuda::InputType::f32 ? "f32" : "f16", us, gbs, 100.0 * gbs / copy_gbs);
  std::fflush(stdout);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(k);
  cudaFree(v);
  cudaStreamDestroy(stream);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, extras = false;
  int reps = 200;
  std::vector<std::string> formats = {"tq4", "k8v4", "f16", "tq3", "tq2"};
  std::vector<cuda_detail::DecodeKernel> kernels = {cuda_detail::DecodeKernel::mma};
  auto split_list = [](const std::string& list) {
    std::vector<std::string> out;
    for (std::size_t pos = 0; pos != std::string::npos;) {
      const std::size_t comma = list.find(',', pos);
      out.push_back(list.substr(pos, comma == std::string::npos ? comma : comma - pos));
      pos = comma == std::string::npos ? comma : comma + 1;
    }
    return out;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--extras") extras = true;
    else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (a == "--copies" && i + 1 < argc) g_copies_override = std::strtoul(argv[++i], nullptr, 10);
    else if (a == "--formats" && i + 1 < argc) formats = split_list(argv[++i]);
    else if (a == "--kernels" && i + 1 < argc) {
      kernels.clear();
      for (const auto& k : split_list(argv[++i])) {
        if (k == "mma") kernels.push_back(cuda_detail::DecodeKernel::mma);
        else if (k == "cuda_core") kernels.push_back(cuda_detail::DecodeKernel::cuda_core);
        else {
          std::fprintf(stderr, "bench_cuda: unknown kernel %s\n", k.c_str());
          return 1;
        }
      }
    } else {
      std::fprintf(stderr, "usage: bench_cuda [--quick] [--formats tq4,k8v4,f16] [--kernels mma,cuda_core] [--extras] [--reps N] [--copies N]\n");
      return 1;
    }
  }
  try {
    if (tqkv::cuda::device_count() == 0) {
      std::printf("bench_cuda: no CUDA device\n");
      return 0;
    }
    std::printf("device: %s\n", tqkv::cuda_backend::device_description().c_str());
    const double copy_gbs = copy_bandwidth_gbs();
    std::printf("device-to-device copy: %.0f GB/s (read + write)\n\n", copy_gbs);
    const Pattern pat = make_pattern(0xbe9c4);
    std::printf("| format | kernel | d | heads | batch | context | median us | graph us/step | GB/s | %% copy | graph %% copy | copies |\n");
    std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    const std::vector<int> contexts = quick ? std::vector<int>{4096, 16384} : std::vector<int>{4096, 16384, 65536};
    for (const auto& f : formats)
      for (int batch : {1, 8})
        for (int ctx : contexts) run({f, 128, 32, 8, batch, ctx}, pat, reps, copy_gbs, kernels);
    if (extras) {
      // Larger head dims (issue 6: within 10 % of d = 128 in bandwidth terms).
      for (int d : {256, 512}) run({"tq4", d, 32, 8, 8, 16384}, pat, reps, copy_gbs, kernels);
      run({"tq4", 256, 16, 8, 8, 65536}, pat, reps, copy_gbs, kernels);
      run({"tq4", 128, 32, 8, 32, 16384}, pat, reps, copy_gbs, kernels);
    }
    if (!extras) return 0;
    std::printf("\n| append | input | chunk | median us | GB/s (read + written) | %% copy |\n| --- | --- | --- | --- | --- | --- |\n");
    for (const auto type : {cuda::InputType::f16, cuda::InputType::f32}) run_append("tq4", type, quick ? 5 : 20, copy_gbs);
  } catch (const tqkv::Error& e) {
    std::fprintf(stderr, "bench_cuda: %s\n", e.what());
    return 1;
  }
  return 0;
}
