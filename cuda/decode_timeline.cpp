// decode_timeline: where the time of one decode launch goes, block by block. Each block
// time-stamps its phases with %globaltimer (launch.hpp: kTimelinePhases); this prints, over all
// blocks, the times from the first block's start to each phase. Used to find the fixed cost of
// a decode step (docs/gpu/performance-notes.md, v6). tq4 unless --format names another pair,
// d = 128, 32/8 heads; cache bytes are constant (the kernel's timing does not depend on the values).
//
// With --graph, the launches are the steps of one CUDA-graph replay (kGraphTimelineSteps decode
// steps over as many caches, as bench_cuda's graph rows run them), each with its own timeline:
// it shows how a step's blocks start, wait (programmatic launch) and end against the step before.
//
// Each launch also shows where its blocks ran: loop ends and loop durations on SMs that held one
// block of the launch against SMs that held two or more (a graph step's blocks may land unevenly,
// r179), and by groups of SM ids.
//
// With --raw, each launch also lists every block: its index, SM, loop start and loop end (worker 0),
// for offline analysis (is a slow loop the SM's or the block's range?).
//
// usage: decode_timeline [--graph] [--raw] [--format NAME] [--splits N] [batch:context ...]
//        (default: tq4, the backend's split count; 1:4096 1:65536 8:16384 8:65536)
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
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

// The format pair of every cache (--format), and DecodeParams::splits (--splits; 0: the backend's).
KvFormat g_format = parse_kv_format("tq4");
int g_splits = 0;
bool g_raw = false;  // --raw

// A cache (g_format, d = 128, 8 KV heads) full to `context` positions, with a query and an output.
struct Step {
  cuda::DeviceKvCache cache;
  float* q = nullptr;
  float* out = nullptr;
  Step(int batch, int context) : cache(config(batch, context)) {
    const CacheView v = cache.view();
    const std::size_t rows = std::size_t(batch) * v.kv_heads * context;
    check(cudaMemset(const_cast<uint8_t*>(v.k_codes), 0x5a, rows * v.k_row_bytes), "fill");
    check(cudaMemset(const_cast<uint8_t*>(v.v_codes), 0xa5, rows * v.v_row_bytes), "fill");
    // scales 0.0115 each (bf16 0x3c3c)
    check(cudaMemset(const_cast<ScalePair*>(v.scales), 0x3c, rows * sizeof(ScalePair)), "fill");
    const std::vector<int64_t> tokens(batch, context);
    check(cudaMemcpy(const_cast<int64_t*>(v.tokens), tokens.data(), batch * 8, cudaMemcpyHostToDevice), "tokens");
    const std::size_t n_q = std::size_t(batch) * 32 * 128;
    check(cudaMalloc(reinterpret_cast<void**>(&q), n_q * 4), "malloc");
    check(cudaMalloc(reinterpret_cast<void**>(&out), n_q * 4), "malloc");
    check(cudaMemset(q, 0x3c, n_q * 4), "fill");
  }
  ~Step() {
    cudaFree(q);
    cudaFree(out);
  }
  Step(const Step&) = delete;
  Step& operator=(const Step&) = delete;
  static CacheConfig config(int batch, int context) {
    CacheConfig cfg;
    cfg.batch = batch;
    cfg.kv_heads = 8;
    cfg.head_dim = 128;
    cfg.capacity = context;
    cfg.format = g_format;
    return cfg;
  }
  void launch(cudaStream_t stream) {
    DecodeParams p;
    p.q_heads = 32;
    p.splits = g_splits;  // by default the backend's choice, as a user gets it
    cuda_backend::decode_attention(cache.view(), q, out, p, ExecContext{Backend::cuda, stream});
  }
};

constexpr int kMaxBlocks = 1 << 16;
constexpr std::size_t kTimelineValues = std::size_t(kMaxBlocks) * cuda_detail::kTimelineSlots;
constexpr int kLoopStart = 2, kLoopEnd = 3;  // phases "loop start", "loop end (worker 0)"
const char* const kPhaseNames[] = {"entry", "query rotated", "loop start", "loop end (worker 0)", "workers joined",
                                   "finish start", "finish done", "split merge done"};
static_assert(sizeof(kPhaseNames) / sizeof(kPhaseNames[0]) == cuda_detail::kTimelinePhases);

// One launch's timeline as read back: values per block, blocks up to the first never entered.
struct Timeline {
  std::vector<unsigned long long> v;
  std::size_t blocks = 0;
  explicit Timeline(const unsigned long long* device) : v(kTimelineValues) {
    check(cudaMemcpy(v.data(), device, kTimelineValues * 8, cudaMemcpyDeviceToHost), "read timeline");
    while (blocks < kMaxBlocks && v[blocks * cuda_detail::kTimelineSlots] != 0) ++blocks;
  }
  unsigned long long first_entry() const {
    unsigned long long t0 = ~0ull;
    for (std::size_t b = 0; b < blocks; ++b) t0 = std::min(t0, v[b * cuda_detail::kTimelineSlots]);
    return t0;
  }
  // Phase `ph` of every block that reached it, in us after t0.
  std::vector<double> phase(int ph, unsigned long long t0) const {
    std::vector<double> t;
    for (std::size_t b = 0; b < blocks; ++b) {
      const unsigned long long x = v[b * cuda_detail::kTimelineSlots + ph];
      if (x != 0) t.push_back((double(x) - double(t0)) * 1e-3);
    }
    return t;
  }
};

void print_row(const std::string& name, const std::vector<double>& t) {
  std::printf("| %s | %zu | %.2f | %.2f | %.2f | %.2f |\n", name.c_str(), t.size(),
              t.empty() ? 0.0 : *std::min_element(t.begin(), t.end()), percentile(t, 0.5), percentile(t, 0.9),
              t.empty() ? 0.0 : *std::max_element(t.begin(), t.end()));
}
constexpr const char* kTableHead = "| phase | blocks | min | median | p90 | max |\n| --- | --- | --- | --- | --- | --- |\n";

// Loop end (worker 0) and loop duration (loop start to loop end) by where the block ran: SMs that
// held one block of this launch against SMs that held two or more, and by groups of 16 consecutive
// SM ids; and how many SMs held how many. A block late because it started late shows in its end
// but not in its duration.
void print_by_sm(const Timeline& tl, unsigned long long t0) {
  struct Loop {
    double end, duration;
  };
  std::map<unsigned, std::vector<Loop>> by_sm;
  if (g_raw) std::printf("\n| block | SM | loop start | loop end |\n| --- | --- | --- | --- |\n");
  for (std::size_t b = 0; b < tl.blocks; ++b) {
    const unsigned long long* block = &tl.v[b * cuda_detail::kTimelineSlots];
    const unsigned long long sm = block[cuda_detail::kTimelinePhases], start = block[kLoopStart], end = block[kLoopEnd];
    if (sm == 0 || start == 0 || end == 0) continue;
    const double start_us = (double(start) - double(t0)) * 1e-3, end_us = (double(end) - double(t0)) * 1e-3;
    by_sm[unsigned(sm - 1)].push_back({end_us, end_us - start_us});
    if (g_raw) std::printf("| %zu | %llu | %.2f | %.2f |\n", b, sm - 1, start_us, end_us);
  }
  std::map<std::string, std::vector<Loop>> groups;
  std::map<std::size_t, int> sms_holding;  // blocks per SM -> SMs
  for (const auto& [sm, loops] : by_sm) {
    ++sms_holding[loops.size()];
    auto& lone = groups[loops.size() == 1 ? "SMs with 1 block" : "SMs with 2+ blocks"];
    lone.insert(lone.end(), loops.begin(), loops.end());
    auto& g = groups["SM ids " + std::to_string(sm / 16 * 16) + "-" + std::to_string(sm / 16 * 16 + 15)];
    g.insert(g.end(), loops.begin(), loops.end());
  }
  std::printf("\nSMs holding n blocks of this launch:");
  for (const auto& [n, count] : sms_holding) std::printf(" %zu: %d", n, count);
  for (const bool duration : {false, true}) {
    std::printf("\n\n| %s by SM | blocks | min | median | p90 | max |\n| --- | --- | --- | --- | --- | --- |\n",
                duration ? "loop duration (worker 0)" : "loop end (worker 0)");
    for (const auto& [name, loops] : groups) {
      std::vector<double> t;
      for (const Loop& l : loops) t.push_back(duration ? l.duration : l.end);
      print_row(name, t);
    }
  }
}

unsigned long long* alloc_timeline() {
  unsigned long long* d = nullptr;
  check(cudaMalloc(reinterpret_cast<void**>(&d), kTimelineValues * 8), "malloc timeline");
  check(cudaMemset(d, 0, kTimelineValues * 8), "clear timeline");
  return d;
}

void run(int batch, int context) {
  Step step(batch, context);
  for (int i = 0; i < 3; ++i) step.launch(nullptr);
  check(cudaDeviceSynchronize(), "warm-up");

  unsigned long long* d_tl = alloc_timeline();
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cuda_detail::set_decode_timeline(d_tl);
  cudaEventRecord(e0);
  step.launch(nullptr);
  cudaEventRecord(e1);
  cuda_detail::set_decode_timeline(nullptr);
  check(cudaEventSynchronize(e1), "timed launch");
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  const Timeline tl(d_tl);
  const unsigned long long t0 = tl.first_entry();
  std::printf("\nbatch %d, context %d: %zu blocks, event time %.1f us (time from the first block's entry, us)\n",
              batch, context, tl.blocks, ms * 1e3);
  std::printf("%s", kTableHead);
  for (int ph = 0; ph < cuda_detail::kTimelinePhases; ++ph) print_row(kPhaseNames[ph], tl.phase(ph, t0));
  print_by_sm(tl, t0);
  cudaFree(d_tl);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
}

// Steps per graph in --graph mode (each on its own cache, so a step's bytes come from DRAM).
constexpr int kGraphTimelineSteps = 4;

void run_graph(int batch, int context) {
  std::vector<std::unique_ptr<Step>> steps;
  for (int s = 0; s < kGraphTimelineSteps; ++s) steps.push_back(std::make_unique<Step>(batch, context));
  cudaStream_t stream;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  for (auto& st : steps) st->launch(stream);  // warm-up; sizes the workspace before capture
  check(cudaStreamSynchronize(stream), "warm-up");
  std::vector<unsigned long long*> d_tl;
  for (int s = 0; s < kGraphTimelineSteps; ++s) d_tl.push_back(alloc_timeline());
  // Two graphs of the same steps: one with timelines, one without (the step time unperturbed).
  auto capture = [&](bool with_timeline) {
    cudaGraph_t graph;
    check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture");
    for (int s = 0; s < kGraphTimelineSteps; ++s) {
      cuda_detail::set_decode_timeline(with_timeline ? d_tl[s] : nullptr);
      steps[s]->launch(stream);
    }
    cuda_detail::set_decode_timeline(nullptr);
    check(cudaStreamEndCapture(stream, &graph), "end capture");
    cudaGraphExec_t exec;
    check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
    cudaGraphDestroy(graph);
    check(cudaGraphUpload(exec, stream), "upload");
    return exec;
  };
  cudaGraphExec_t timed = capture(false), marked = capture(true);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  float best_ms = 1e30f;
  for (int r = 0; r < 10; ++r) {
    cudaEventRecord(e0, stream);
    check(cudaGraphLaunch(timed, stream), "replay");
    cudaEventRecord(e1, stream);
    check(cudaEventSynchronize(e1), "replay");
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    best_ms = std::min(best_ms, ms);
  }
  check(cudaGraphLaunch(marked, stream), "replay");  // the first marked replay warms the caches' L2 state
  check(cudaStreamSynchronize(stream), "replay");
  for (auto* d : d_tl) check(cudaMemset(d, 0, kTimelineValues * 8), "clear timeline");
  check(cudaGraphLaunch(marked, stream), "replay");
  check(cudaStreamSynchronize(stream), "replay");
  std::vector<Timeline> tls;
  for (auto* d : d_tl) tls.emplace_back(d);
  const unsigned long long t0 = tls[0].first_entry();
  std::printf("\nbatch %d, context %d, graph of %d steps: %zu blocks per step, %.1f us per step unmarked (best of "
              "10 replays); us from step 0's first block entry\n",
              batch, context, kGraphTimelineSteps, tls[0].blocks, best_ms * 1e3 / kGraphTimelineSteps);
  for (int s = 0; s < kGraphTimelineSteps; ++s) {
    std::printf("\nstep %d\n%s", s, kTableHead);
    for (int ph = 0; ph < cuda_detail::kTimelinePhases; ++ph) print_row(kPhaseNames[ph], tls[s].phase(ph, t0));
    print_by_sm(tls[s], t0);
  }
  cudaGraphExecDestroy(timed);
  cudaGraphExecDestroy(marked);
  for (auto* d : d_tl) cudaFree(d);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaStreamDestroy(stream);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (cuda::device_count() == 0) {
      std::printf("decode_timeline: no CUDA device\n");
      return 0;
    }
    std::printf("device: %s\n", cuda_backend::device_description().c_str());
    std::vector<std::pair<int, int>> shapes;
    bool graph = false;
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      int b = 0, c = 0;
      if (arg == "--graph") {
        graph = true;
      } else if (arg == "--raw") {
        g_raw = true;
      } else if (arg == "--format" && i + 1 < argc) {
        g_format = parse_kv_format(argv[++i]);  // raises invalid_argument naming a bad format
      } else if (arg == "--splits" && i + 1 < argc) {
        g_splits = std::atoi(argv[++i]);
        if (g_splits < 1) {
          std::fprintf(stderr, "decode_timeline: --splits %s: expected a positive count\n", argv[i]);
          return 1;
        }
      } else if (std::sscanf(argv[i], "%d:%d", &b, &c) == 2 && b >= 1 && c >= 1) {
        shapes.emplace_back(b, c);
      } else {
        std::fprintf(stderr, "decode_timeline: '%s' is not --graph, --raw, --format NAME, --splits N or BATCH:CONTEXT\n",
                     argv[i]);
        return 1;
      }
    }
    if (shapes.empty()) shapes = {{1, 4096}, {1, 65536}, {8, 16384}, {8, 65536}};
    std::printf("format: %s, splits: %s\n", kv_format_name(g_format).c_str(),
                g_splits > 0 ? std::to_string(g_splits).c_str() : "the backend's");
    for (auto [b, c] : shapes) graph ? run_graph(b, c) : run(b, c);
  } catch (const tqkv::Error& e) {
    std::fprintf(stderr, "decode_timeline: %s\n", e.what());
    return 1;
  }
  return 0;
}
