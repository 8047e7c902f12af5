// decode_timeline: where the time of one decode launch goes, block by block. Each block
// time-stamps its phases with %globaltimer (launch.hpp: kTimelinePhases); this prints, over all
// blocks, the times from the first block's start to each phase. Used to find the fixed cost of
// a decode step (docs/gpu/performance-notes.md, v6). tq4, d = 128, 32/8 heads; cache bytes are
// constant (the kernel's timing does not depend on the values).
//
// usage: decode_timeline [batch:context ...]   (default: 1:4096 1:65536 8:16384 8:65536)
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "backend.hpp"
#include "launch.hpp"
#include "tqkv/cuda.hpp"
#include "tqkv/error.hpp"

namespace {

using namespace tqkv;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "decode_timeline: %s: %s\n", what, cudaGetErrorString(e));
    std::exit(2);
  }
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(p * (v.size() - 1) + 0.5)];
}

void run(int batch, int context) {
  CacheConfig cfg;
  cfg.batch = batch;
  cfg.kv_heads = 8;
  cfg.head_dim = 128;
  cfg.capacity = context;
  cfg.format = parse_kv_format("tq4");
  cuda::DeviceKvCache cache(cfg);
  const CacheView v = cache.view();
  const std::size_t rows = std::size_t(batch) * cfg.kv_heads * context;
  check(cudaMemset(const_cast<uint8_t*>(v.k_codes), 0x5a, rows * v.k_row_bytes), "fill");
  check(cudaMemset(const_cast<uint8_t*>(v.v_codes), 0xa5, rows * v.v_row_bytes), "fill");
  check(cudaMemset(const_cast<float*>(v.k_scales), 0x3c, rows * 4), "fill");  // 0.0115 each
  check(cudaMemset(const_cast<float*>(v.v_scales), 0x3c, rows * 4), "fill");
  const std::vector<int64_t> tokens(batch, context);
  check(cudaMemcpy(const_cast<int64_t*>(v.tokens), tokens.data(), batch * 8, cudaMemcpyHostToDevice), "tokens");
  const std::size_t n_q = std::size_t(batch) * 32 * 128;
  float *q = nullptr, *out = nullptr;
  check(cudaMalloc(reinterpret_cast<void**>(&q), n_q * 4), "malloc");
  check(cudaMalloc(reinterpret_cast<void**>(&out), n_q * 4), "malloc");
  check(cudaMemset(q, 0x3c, n_q * 4), "fill");
  DecodeParams p;
  p.q_heads = 32;
  p.splits = 0;  // the backend's choice, as a user gets it
  const ExecContext ctx{Backend::cuda, nullptr};
  for (int i = 0; i < 3; ++i) cuda_backend::decode_attention(v, q, out, p, ctx);
  check(cudaDeviceSynchronize(), "warm-up");

  constexpr int kMaxBlocks = 1 << 16;
  unsigned long long* d_tl = nullptr;
  const std::size_t tl_bytes = std::size_t(kMaxBlocks) * cuda_detail::kTimelineSlots * 8;
  check(cudaMalloc(reinterpret_cast<void**>(&d_tl), tl_bytes), "malloc timeline");
  check(cudaMemset(d_tl, 0, tl_bytes), "clear timeline");
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cuda_detail::set_decode_timeline(d_tl);
  cudaEventRecord(e0);
  cuda_backend::decode_attention(v, q, out, p, ctx);
  cudaEventRecord(e1);
  cuda_detail::set_decode_timeline(nullptr);
  check(cudaEventSynchronize(e1), "timed launch");
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  std::vector<unsigned long long> tl(tl_bytes / 8);
  check(cudaMemcpy(tl.data(), d_tl, tl_bytes, cudaMemcpyDeviceToHost), "read timeline");

  std::size_t blocks = 0;
  while (blocks < kMaxBlocks && tl[blocks * cuda_detail::kTimelineSlots] != 0) ++blocks;
  unsigned long long t0 = ~0ull;
  for (std::size_t b = 0; b < blocks; ++b) t0 = std::min(t0, tl[b * cuda_detail::kTimelineSlots]);
  static const char* kNames[] = {"entry", "query rotated", "loop start", "loop end (worker 0)", "workers joined",
                                 "finish start", "finish done", "split merge done"};
  static_assert(sizeof(kNames) / sizeof(kNames[0]) == cuda_detail::kTimelinePhases);
  constexpr int kLoopEnd = 3;  // kNames[kLoopEnd]: "loop end (worker 0)"
  auto print_row = [](const std::string& name, const std::vector<double>& t) {
    std::printf("| %s | %zu | %.2f | %.2f | %.2f | %.2f |\n", name.c_str(), t.size(),
                t.empty() ? 0.0 : *std::min_element(t.begin(), t.end()), percentile(t, 0.5), percentile(t, 0.9),
                t.empty() ? 0.0 : *std::max_element(t.begin(), t.end()));
  };
  std::printf("\nbatch %d, context %d: %zu blocks, event time %.1f us (time from the first block's entry, us)\n",
              batch, context, blocks, ms * 1e3);
  std::printf("| phase | blocks | min | median | p90 | max |\n| --- | --- | --- | --- | --- | --- |\n");
  for (int ph = 0; ph < cuda_detail::kTimelinePhases; ++ph) {
    std::vector<double> t;
    for (std::size_t b = 0; b < blocks; ++b) {
      const unsigned long long x = tl[b * cuda_detail::kTimelineSlots + ph];
      if (x != 0) t.push_back((x - t0) * 1e-3);
    }
    print_row(kNames[ph], t);
  }
  // Loop end (worker 0) by where the block ran: SMs that held one block of this launch against
  // SMs that held two or more, and by groups of 16 consecutive SM ids.
  std::map<unsigned, std::vector<double>> by_sm;
  for (std::size_t b = 0; b < blocks; ++b) {
    const unsigned long long sm = tl[b * cuda_detail::kTimelineSlots + cuda_detail::kTimelinePhases];
    const unsigned long long end = tl[b * cuda_detail::kTimelineSlots + kLoopEnd];
    if (sm != 0 && end != 0) by_sm[unsigned(sm - 1)].push_back((end - t0) * 1e-3);
  }
  std::map<std::string, std::vector<double>> groups;
  for (const auto& [sm, ends] : by_sm) {
    auto& lone = groups[ends.size() == 1 ? "SMs with 1 block" : "SMs with 2+ blocks"];
    lone.insert(lone.end(), ends.begin(), ends.end());
    auto& g = groups["SM ids " + std::to_string(sm / 16 * 16) + "-" + std::to_string(sm / 16 * 16 + 15)];
    g.insert(g.end(), ends.begin(), ends.end());
  }
  std::printf("\n| loop end (worker 0) by SM | blocks | min | median | p90 | max |\n| --- | --- | --- | --- | --- | --- |\n");
  for (const auto& [name, t] : groups) print_row(name, t);
  cudaFree(d_tl);
  cudaFree(q);
  cudaFree(out);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (cuda::device_count() == 0) {
      std::printf("decode_timeline: no CUDA device\n");
      return 0;
    }
    std::printf("device: %s\n", cuda_backend::device_description().c_str());
    std::vector<std::pair<int, int>> shapes = {{1, 4096}, {1, 65536}, {8, 16384}, {8, 65536}};
    if (argc > 1) {
      shapes.clear();
      for (int i = 1; i < argc; ++i) {
        int b = 0, c = 0;
        if (std::sscanf(argv[i], "%d:%d", &b, &c) != 2 || b < 1 || c < 1) {
          std::fprintf(stderr, "decode_timeline: '%s' is not BATCH:CONTEXT\n", argv[i]);
          return 1;
        }
        shapes.emplace_back(b, c);
      }
    }
    for (auto [b, c] : shapes) run(b, c);
  } catch (const tqkv::Error& e) {
    std::fprintf(stderr, "decode_timeline: %s\n", e.what());
    return 1;
  }
  return 0;
}
