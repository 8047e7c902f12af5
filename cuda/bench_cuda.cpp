// bench_cuda: times tqkv decode attention on the GPU against the card's measured read and copy
// bandwidth, over a grid of shapes (issue 6), and writes the rows as markdown (stdout) and JSON.
// scripts/gpu-bench/run.sh runs it with the PyTorch SDPA peer; scripts/gpu-bench/report.py merges
// the two into bench/results/.
//
// Each row: the median of single launches timed with CUDA events (for short kernels this includes
// the host's launch latency) and the time per step of CUDA-graph replays of kGraphSteps decode
// steps. Cold L2: every launch reads one of enough rotating cache
// copies that no earlier launch left its bytes in L2. GB/s counts the KV bytes the step must read
// (kv_bytes_per_position: rows + scales); % read compares with a read-only kernel's bandwidth (a
// decode step only reads), % copy with a device-to-device copy (bytes read + written).
// --append also times append (quantize-on-write) of a 32k-token chunk, counting bytes read (f16, bf16 or
// f32 input) plus bytes written, over the GPU's time (the call queued behind a wait; from an idle
// stream beside it), and a decode step (append_step + decode, run_step). --floors times,
// instead of decode, what the card does with each shape's bytes without arithmetic (the split-K
// skeleton of a step, bench_read.hpp).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "backend.hpp"
#include "bench_read.hpp"
#include "launch.hpp"
#include "tqkv/cuda.hpp"
#include "tqkv/error.hpp"

namespace {

using namespace tqkv;

constexpr const char* kUsage =
    "usage: bench_cuda [--grid full|issue|quick|batches] [--formats tq4,k8v4,...]\n"
    "                  [--json PATH] [--reps N] [--copies N] [--splits N] [--append] [--floors] [--plan]\n"
    "                  [--batch N] [--context N] [--head-dim N] [--append-formats tq4,tq8,...]\n"
    "  --grid     full: d 64..512, 4 head layouts, batch 1..128, context 1k..128k (skips what does not fit);\n"
    "             issue (default): issue 6's target shapes; quick: a handful; batches: d 128, 32/8 heads,\n"
    "             batch 1..8, context 4k..64k (where the automatic split count changes with the batch)\n"
    "  --formats  K/V format pairs (default: every built pair; issue grid: tq4,k8v4,tq3,tq2,f16)\n"
    "  --json     also write every row (and the bandwidths) to PATH\n"
    "  --reps     single launches per row at most (big shapes get fewer, down to 10); default 200\n"
    "  --copies   rotating cache copies (1 = warm L2); default: enough for a cold L2\n"
    "  --splits   splits of each sequence's positions (DecodeParams::splits); default: the automatic choice\n"
    "  --append   also time append of a 32k-token chunk, and a decode step (append_step + decode) on a\n"
    "             ring cache against decode alone, and decode with lse + merge_attention_states\n"
    "             (--extras: the same)\n"
    "  --append-formats  the formats of the append rows (default tq4; implies --append)\n"
    "  --floors   instead of decode rows: the launch floor and, per shape, the split-K skeleton of a step\n"
    "             (the same bytes, partials and merge, no arithmetic) at every split count\n"
    "  --plan     print the rows, copies, repetitions and an estimate of the run time; run nothing\n"
    "  --batch, --context, --head-dim  keep only the grid's rows with that value (e.g. one shape for ncu)\n";

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
// --splits N: DecodeParams::splits of every decode step (0: the library's automatic choice).
int g_splits = 0;
// Device memory left beside the copies: decode workspace, queries, outputs, graphs.
constexpr std::size_t kReserveBytes = std::size_t{2} << 30;
// Random pattern tiled over the cache storage (codes, f16 values, scales).
constexpr std::size_t kPatternBytes = std::size_t{16} << 20;
// Bytes the timed single launches of one row read in total (20 ms at 3 TB/s): big shapes get
// fewer repetitions than --reps, down to kMinReps, so the full grid stays within minutes.
constexpr double kTimedBytes = 60e9;
constexpr int kMinReps = 10;
constexpr int kWarmupLaunches = 5;
// Decode steps per captured graph (as a model captures all layers of a step); replays per row.
constexpr int kGraphSteps = 16;
constexpr int kMinGraphReplays = 3;
constexpr int kMaxGraphReplays = 20;
// Graph replays = reps / this, clamped to the two above: graphs run about as many steps as single launches.
constexpr int kRepsPerGraphReplay = kGraphSteps;
// Sections of the copies' storage start on this boundary (16-byte loads need 16; 256 matches cudaMalloc).
constexpr std::size_t kSectionAlignment = 256;
// Buffer the read and copy bandwidths stream through: far beyond L2.
constexpr std::size_t kBandwidthBytes = std::size_t{1} << 30;
constexpr int kBandwidthReps = 12;
constexpr int kBandwidthWarmup = 2;

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
  std::vector<ScalePair> s(kPatternBytes / sizeof(ScalePair));
  std::uniform_real_distribution<float> uni(0.05f, 0.15f);
  for (auto& x : s) x = {float_to_bf16(uni(rng)), float_to_bf16(uni(rng))};
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

std::size_t align_up(std::size_t bytes, std::size_t alignment) {
  return (bytes + alignment - 1) / alignment * alignment;
}

// The pattern in device memory, so filling many GB of copies runs at device-copy speed.
struct DevicePattern {
  void *codes = nullptr, *halves = nullptr, *scales = nullptr;
  explicit DevicePattern(const Pattern& p) {
    for (auto [dst, src] : {std::pair{&codes, &p.codes}, {&halves, &p.halves}, {&scales, &p.scales}}) {
      check(cudaMalloc(dst, kPatternBytes), "malloc pattern");
      check(cudaMemcpy(*dst, src->data(), kPatternBytes, cudaMemcpyHostToDevice), "pattern");
    }
  }
  ~DevicePattern() {
    for (void* b : {codes, halves, scales}) cudaFree(b);
  }
  DevicePattern(const DevicePattern&) = delete;
  DevicePattern& operator=(const DevicePattern&) = delete;
};

void tile_on_device(void* dst, std::size_t bytes, const void* pattern) {
  for (std::size_t off = 0; off < bytes; off += kPatternBytes)
    check(cudaMemcpy(static_cast<uint8_t*>(dst) + off, pattern, std::min(kPatternBytes, bytes - off),
                     cudaMemcpyDeviceToDevice),
          "fill");
}

// Median milliseconds of kBandwidthReps event-timed calls of f() on the default stream.
template <typename F>
float median_ms(F&& f) {
  cudaEvent_t e0, e1;
  check(cudaEventCreate(&e0), "event");
  check(cudaEventCreate(&e1), "event");
  std::vector<float> ms;
  for (int i = 0; i < kBandwidthWarmup + kBandwidthReps; ++i) {
    check(cudaEventRecord(e0), "event");
    f();
    check(cudaEventRecord(e1), "event");
    check(cudaEventSynchronize(e1), "bandwidth");
    float t = 0;
    check(cudaEventElapsedTime(&t, e0, e1), "event");
    if (i >= kBandwidthWarmup) ms.push_back(t);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return static_cast<float>(median(ms));
}

struct Bandwidth {
  double copy_gbs = 0;  // device-to-device copy, bytes read + written (METHOD.md)
  double read_gbs = 0;  // read-only kernel, bytes read
};

Bandwidth measure_bandwidth() {
  void *a = nullptr, *b = nullptr;
  unsigned* sink = nullptr;
  check(cudaMalloc(&a, kBandwidthBytes), "malloc bandwidth");
  check(cudaMalloc(&b, kBandwidthBytes), "malloc bandwidth");
  check(cudaMalloc(reinterpret_cast<void**>(&sink), sizeof(unsigned)), "malloc sink");
  check(cudaMemset(a, 1, kBandwidthBytes), "memset");
  const double bytes = static_cast<double>(kBandwidthBytes);
  Bandwidth bw;
  bw.copy_gbs = 2 * bytes / (median_ms([&] {
                  check(cudaMemcpyAsync(b, a, kBandwidthBytes, cudaMemcpyDeviceToDevice), "copy");
                }) * 1e-3) / 1e9;
  bw.read_gbs = bytes / (median_ms([&] { check(bench::launch_read_all(a, kBandwidthBytes, sink, nullptr), "read"); }) *
                         1e-3) / 1e9;
  cudaFree(a);
  cudaFree(b);
  cudaFree(sink);
  return bw;
}

struct Shape {
  KvFormat format;
  int head_dim, q_heads, kv_heads, batch, context;
  std::size_t rows() const { return std::size_t(batch) * kv_heads * context; }
};

// The grids of issue 6. full: every built pair (or --formats) over every shape; skipped rows say so.
std::vector<Shape> full_grid(const std::vector<KvFormat>& formats) {
  struct Heads { int head_dim, q, kv; };
  // (32, 8) and (32, 32) at every d; (16, 8) at d = 256 and (9, 3) at d = 64 as in the issue.
  const std::vector<Heads> layouts = {{64, 32, 8},   {64, 9, 3},     {64, 32, 32},  {128, 32, 8}, {128, 32, 32},
                                      {256, 32, 8},  {256, 16, 8},   {256, 32, 32}, {512, 32, 8}, {512, 32, 32}};
  std::vector<Shape> grid;
  for (const auto& f : formats)
    for (const auto& h : layouts)
      for (int batch : {1, 8, 32, 128})
        for (int ctx : {1024, 4096, 16384, 65536, 131072}) grid.push_back({f, h.head_dim, h.q, h.kv, batch, ctx});
  return grid;
}

// Issue 6's target shapes: d = 128 32/8 at batch 1, 8, 32 and 4k..64k, plus d = 256 and 512.
std::vector<Shape> issue_grid(const std::vector<KvFormat>& formats) {
  std::vector<Shape> grid;
  for (const auto& f : formats) {
    for (int batch : {1, 8, 32})
      for (int ctx : {4096, 16384, 65536}) grid.push_back({f, 128, 32, 8, batch, ctx});
    grid.push_back({f, 256, 16, 8, 8, 65536});
    grid.push_back({f, 512, 32, 8, 8, 16384});
  }
  return grid;
}

// Every batch from 1 to 8 at d = 128, 32/8 heads: the automatic split count (backend.cpp,
// resolve_splits) moves between one and two blocks per SM over these.
std::vector<Shape> batches_grid(const std::vector<KvFormat>& formats) {
  std::vector<Shape> grid;
  for (const auto& f : formats)
    for (int batch = 1; batch <= 8; ++batch)
      for (int ctx : {4096, 16384, 65536}) grid.push_back({f, 128, 32, 8, batch, ctx});
  return grid;
}

std::vector<Shape> quick_grid(const std::vector<KvFormat>& formats) {
  std::vector<Shape> grid;
  for (const auto& f : formats)
    for (int batch : {1, 8})
      for (int ctx : {4096, 65536}) grid.push_back({f, 128, 32, 8, batch, ctx});
  return grid;
}

std::vector<KvFormat> built_pairs() {
  std::vector<KvFormat> pairs;
  for (Format k : kAllFormats)
    for (Format v : kAllFormats)
      if (cuda_detail::decode_pair_built({k, v})) pairs.push_back({k, v});
  return pairs;
}

// How one row runs: the copies' storage (arena) and the repetitions.
struct Plan {
  std::size_t bytes_read = 0;     // KV bytes one decode step reads
  std::size_t k_codes = 0, v_codes = 0, scales = 0;  // bytes of each section of one copy (aligned)
  std::size_t copies = 0;         // 0: one copy does not fit in device memory
  int reps = 0, graph_replays = 0;
  std::size_t copy_bytes() const { return k_codes + v_codes + scales; }
  std::size_t graphs() const { return (copies + kGraphSteps - 1) / kGraphSteps; }
  // Decode steps the row runs: warm-up, single launches, graph replays.
  std::size_t steps() const {
    return kWarmupLaunches + std::size_t(reps) + std::size_t(graph_replays) * kGraphSteps;
  }
};

Plan make_plan(const Shape& s, std::size_t free_bytes, int max_reps) {
  Plan p;
  p.bytes_read = kv_bytes_per_position(s.format, s.head_dim) * s.rows();
  p.k_codes = align_up(s.rows() * row_bytes(s.format.key, s.head_dim), kSectionAlignment);
  p.v_codes = align_up(s.rows() * row_bytes(s.format.value, s.head_dim), kSectionAlignment);
  p.scales = align_up(s.rows() * sizeof(ScalePair), kSectionAlignment);
  const std::size_t fit = free_bytes > kReserveBytes ? (free_bytes - kReserveBytes) / p.copy_bytes() : 0;
  const std::size_t wanted = g_copies_override ? g_copies_override : (kColdBytes + p.bytes_read - 1) / p.bytes_read;
  p.copies = std::min(std::max<std::size_t>(wanted, 1), fit);
  p.reps = static_cast<int>(std::clamp(kTimedBytes / static_cast<double>(p.bytes_read), double(kMinReps),
                                       double(std::max(max_reps, kMinReps))));
  p.graph_replays = std::clamp(p.reps / kRepsPerGraphReplay, kMinGraphReplays, kMaxGraphReplays);
  return p;
}

// Model of one row's seconds for --plan: steps at the card's read bandwidth with a floor per step
// (single launches of small shapes measure 20-30 us on an H100, docs/gpu r9), plus setup: filling
// the copies at copy speed (read + write), capturing and instantiating graphs, allocation.
constexpr double kPlanReadBytesPerSecond = 3.0e12;
constexpr double kPlanStepFloorSeconds = 25e-6;
constexpr double kPlanRowSetupSeconds = 10e-3;
constexpr double kPlanGraphSetupSeconds = 0.5e-3;
double estimate_seconds(const Plan& p) {
  const double step = std::max(static_cast<double>(p.bytes_read) / kPlanReadBytesPerSecond, kPlanStepFloorSeconds);
  const double fill = 2.0 * static_cast<double>(p.copies * p.copy_bytes()) / kPlanReadBytesPerSecond;
  return static_cast<double>(p.steps()) * step + fill + kPlanRowSetupSeconds +
         static_cast<double>(p.graphs()) * kPlanGraphSetupSeconds;
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

// Time per step of CUDA-graph replays of step(copy): each graph holds kGraphSteps steps over
// consecutive copies, so the time per step includes the launch gaps inside a graph but not the
// host's launch latency. Every graph is uploaded first (so no replay pays for it), then they are
// replayed round-robin: a copy a replay reads was last read by the single launches or a whole
// rotation ago (cold L2).
template <typename Step>
double graph_us_per_step(cudaStream_t stream, const Plan& plan, Step&& step) {
  std::vector<cudaGraphExec_t> graphs(plan.graphs());
  for (std::size_t gi = 0; gi < graphs.size(); ++gi) {
    cudaGraph_t graph;
    check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "capture");
    for (int st = 0; st < kGraphSteps; ++st) step(gi * kGraphSteps + st);
    check(cudaStreamEndCapture(stream, &graph), "end capture");
    check(cudaGraphInstantiate(&graphs[gi], graph, 0), "instantiate");
    cudaGraphDestroy(graph);
  }
  for (auto& g : graphs) check(cudaGraphUpload(g, stream), "upload");
  const double us = time_us(stream, plan.graph_replays, [&](int i) {
                      check(cudaGraphLaunch(graphs[i % graphs.size()], stream), "replay");
                    }) / kGraphSteps;
  for (auto& g : graphs) cudaGraphExecDestroy(g);
  return us;
}

// One row of results. status: "ok", "skipped: memory" or "error: ...".
struct Row {
  Shape shape;
  std::string kernel;
  Plan plan;
  std::string status = "ok";
  double us = 0, graph_us = 0;
};

struct RunInfo {
  std::string card, device, date;
  Bandwidth bw;
  int max_reps = 0;
};

double gbs(std::size_t bytes, double us) { return static_cast<double>(bytes) / (us * 1e-6) / 1e9; }

void print_header() {
  std::printf("| format | kernel | d | heads | batch | context | MB read | median us | graph us/step | GB/s | "
              "%% read | %% copy | graph GB/s | graph %% read | copies | reps |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
}

void print_row(const Row& r, const Bandwidth& bw) {
  const Shape& s = r.shape;
  const std::string head = fmt::format("| {:<6} | {:<9} | {:4} | {:>2}/{:<2} | {:5} | {:6} | {:9.1f} |",
                                       kv_format_name(s.format), r.kernel, s.head_dim, s.q_heads, s.kv_heads,
                                       s.batch, s.context, static_cast<double>(r.plan.bytes_read) / 1e6);
  if (r.status != "ok") {
    std::printf("%s %s | | | | | | | | |\n", head.c_str(), r.status.c_str());
  } else {
    const double g = gbs(r.plan.bytes_read, r.us), gg = gbs(r.plan.bytes_read, r.graph_us);
    std::printf("%s %9.1f | %9.1f | %7.1f | %5.1f%% | %5.1f%% | %7.1f | %5.1f%% | %4zu | %4d |\n", head.c_str(), r.us,
                r.graph_us, g, 100.0 * g / bw.read_gbs, 100.0 * g / bw.copy_gbs, gg, 100.0 * gg / bw.read_gbs,
                r.plan.copies, r.plan.reps);
  }
  std::fflush(stdout);
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) out += c;
  }
  return out + "\"";
}

std::string json_number(double x) { return std::isfinite(x) ? fmt::format("{:.6g}", x) : "null"; }

// Every row with the run's card, date and bandwidths; rewritten after each row so an interrupted
// run keeps what it measured. Keys shared with scripts/gpu-bench/peer_sdpa.py.
void write_json(const std::string& path, const RunInfo& info, const std::vector<Row>& rows) {
  std::string common = fmt::format("\"card\": {}, \"date\": {}, \"copy_gbs\": {}, \"read_gbs\": {}",
                                   json_string(info.card), json_string(info.date), json_number(info.bw.copy_gbs),
                                   json_number(info.bw.read_gbs));
  // make_plan's rule, so the peer (peer_sdpa.py) rotates and repeats the same way.
  const std::string rule = fmt::format(
      "{{\"cold_bytes\": {}, \"copies_override\": {}, \"reserve_bytes\": {}, \"timed_bytes\": {}, "
      "\"min_reps\": {}, \"max_reps\": {}, \"warmup\": {}, \"graph_steps\": {}, \"min_graph_replays\": {}, "
      "\"max_graph_replays\": {}, \"reps_per_graph_replay\": {}}}",
      kColdBytes, g_copies_override, kReserveBytes, json_number(kTimedBytes), kMinReps,
      std::max(info.max_reps, kMinReps), kWarmupLaunches, kGraphSteps, kMinGraphReplays, kMaxGraphReplays, kRepsPerGraphReplay);
  std::string text = fmt::format("{{\"tool\": \"bench_cuda\", \"device\": {}, {}, \"plan_rule\": {}, \"rows\": [\n",
                                 json_string(info.device), common, rule);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    const Shape& s = r.shape;
    const bool ok = r.status == "ok";
    auto timed = [&](double value) { return ok ? json_number(value) : std::string("null"); };
    const double g = ok ? gbs(r.plan.bytes_read, r.us) : 0, gg = ok ? gbs(r.plan.bytes_read, r.graph_us) : 0;
    text += fmt::format(
        "  {{\"format\": {}, \"kernel\": {}, \"head_dim\": {}, \"q_heads\": {}, \"kv_heads\": {}, \"batch\": {}, "
        "\"context\": {}, \"bytes_read\": {}, \"status\": {}, \"median_us\": {}, \"graph_us_per_step\": {}, "
        "\"gbs\": {}, \"graph_gbs\": {}, \"pct_read_bw\": {}, \"pct_copy_bw\": {}, \"graph_pct_read_bw\": {}, "
        "\"graph_pct_copy_bw\": {}, \"copies\": {}, \"reps\": {}, {}}}{}\n",
        json_string(kv_format_name(s.format)), json_string(r.kernel), s.head_dim, s.q_heads, s.kv_heads, s.batch,
        s.context, r.plan.bytes_read, json_string(r.status), timed(r.us), timed(r.graph_us), timed(g), timed(gg),
        timed(100.0 * g / info.bw.read_gbs), timed(100.0 * g / info.bw.copy_gbs), timed(100.0 * gg / info.bw.read_gbs),
        timed(100.0 * gg / info.bw.copy_gbs), r.plan.copies, r.plan.reps, common, i + 1 < rows.size() ? "," : "");
  }
  text += "]}\n";
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f || std::fwrite(text.data(), 1, text.size(), f) != text.size() || std::fclose(f) != 0) {
    std::fprintf(stderr, "bench_cuda: --json %s: cannot write\n", path.c_str());
    std::exit(1);
  }
}

// The copies of one shape: one allocation, section-major ([k codes of every copy][v codes]...),
// so filling it is four long device copies. The DeviceKvCache (capacity 1) supplies what the
// copies share: rotation signs, codebooks and the token counters (set to `context`).
class Copies {
 public:
  Copies(const Shape& s, const Plan& plan, const DevicePattern& pattern) : plan_(plan) {
    CacheConfig cfg;
    cfg.batch = s.batch;
    cfg.kv_heads = s.kv_heads;
    cfg.head_dim = s.head_dim;
    cfg.capacity = 1;
    cfg.format = s.format;
    shared_.emplace(cfg);
    const std::vector<int64_t> tokens(s.batch, s.context);
    check(cudaMemcpy(const_cast<int64_t*>(shared_->view().tokens), tokens.data(), tokens.size() * sizeof(int64_t),
                     cudaMemcpyHostToDevice),
          "tokens");
    if (cudaMalloc(&arena_, plan.copies * plan.copy_bytes()) != cudaSuccess) {
      cudaGetLastError();  // clear the failed allocation; the caller reports the row as skipped
      arena_ = nullptr;
      return;
    }
    auto* base = static_cast<uint8_t*>(arena_);
    const std::size_t n = plan.copies;
    tile_on_device(base, n * plan.k_codes, is_quantized(s.format.key) ? pattern.codes : pattern.halves);
    tile_on_device(base + n * plan.k_codes, n * plan.v_codes,
                   is_quantized(s.format.value) ? pattern.codes : pattern.halves);
    tile_on_device(base + n * (plan.k_codes + plan.v_codes), n * plan.scales, pattern.scales);
    view_ = shared_->view();
    view_.capacity = s.context;
  }
  ~Copies() { cudaFree(arena_); }
  Copies(const Copies&) = delete;
  Copies& operator=(const Copies&) = delete;

  bool allocated() const { return arena_ != nullptr; }
  // Copy i % copies.
  CacheView view(std::size_t i) const {
    const std::size_t n = plan_.copies, c = i % n;
    auto* base = static_cast<const uint8_t*>(arena_);
    CacheView v = view_;
    v.k_codes = base + c * plan_.k_codes;
    v.v_codes = base + n * plan_.k_codes + c * plan_.v_codes;
    v.scales = reinterpret_cast<const ScalePair*>(base + n * (plan_.k_codes + plan_.v_codes) + c * plan_.scales);
    return v;
  }

 private:
  Plan plan_;
  std::optional<cuda::DeviceKvCache> shared_;
  CacheView view_;
  void* arena_ = nullptr;
};

// Times one shape; its row is appended to `rows`.
void run(const Shape& s, const Plan& plan, const DevicePattern& pattern, std::vector<Row>& rows) {
  const std::size_t first = rows.size();
  rows.push_back({s, "mma", plan});
  auto mark = [&](const std::string& status) {
    for (std::size_t i = first; i < rows.size(); ++i) rows[i].status = status;
  };
  if (plan.copies == 0) return mark("skipped: memory");
  const Copies copies(s, plan, pattern);
  if (!copies.allocated()) return mark("skipped: memory");

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
  p.splits = g_splits;
  cudaStream_t stream;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  const ExecContext ctx{Backend::cuda, stream};
  {
    Row& row = rows[first];
    for (int i = 0; i < kWarmupLaunches; ++i) cuda_backend::decode_attention(copies.view(i), q, out, p, ctx);
    row.us = time_us(stream, plan.reps, [&](int i) { cuda_backend::decode_attention(copies.view(i), q, out, p, ctx); });
    row.graph_us = graph_us_per_step(stream, plan, [&](std::size_t copy) {
      cuda_backend::decode_attention(copies.view(copy), q, out, p, ctx);
    });
    check(cudaGetLastError(), "decode");
  }
  cudaFree(q);
  cudaFree(out);
  cudaStreamDestroy(stream);
}

const char* input_name(cuda::InputType type) {
  return type == cuda::InputType::f32 ? "f32" : type == cuda::InputType::f16 ? "f16" : "bf16";
}

// kPatternBytes of standard normal append inputs in `type`'s encoding.
std::vector<uint8_t> append_input_pattern(cuda::InputType type) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<uint8_t> bytes(kPatternBytes);
  const std::size_t size = type == cuda::InputType::f32 ? 4 : 2;
  for (std::size_t i = 0; i < kPatternBytes; i += size) {
    const float x = normal(rng);
    const uint16_t h = type == cuda::InputType::f16 ? float_to_half(x) : float_to_bf16(x);
    std::memcpy(&bytes[i], size == 4 ? static_cast<const void*>(&x) : &h, size);
  }
  return bytes;
}

// What the append rows share: a cache of 8 KV heads at d = 128, device inputs of `tokens` tokens
// per key and value in `type`'s encoding (the standard normal pattern), and a stream.
struct AppendSetup {
  static constexpr int kHeads = 8, kDim = 128;
  AppendSetup(const std::string& format, int batch, int capacity, bool ring, int tokens, cuda::InputType type)
      : cache(CacheConfig{.batch = batch, .kv_heads = kHeads, .head_dim = kDim, .capacity = capacity,
                          .format = parse_kv_format(format), .ring = ring}),
        input_bytes(std::size_t(tokens) * kHeads * kDim * (type == cuda::InputType::f32 ? 4 : 2)) {
    check(cudaMalloc(&k, input_bytes), "malloc k");
    check(cudaMalloc(&v, input_bytes), "malloc v");
    const std::vector<uint8_t> inputs = append_input_pattern(type);
    tile(k, input_bytes, inputs);
    tile(v, input_bytes, inputs);
    check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  }
  ~AppendSetup() {
    cudaFree(k);
    cudaFree(v);
    cudaStreamDestroy(stream);
  }
  AppendSetup(const AppendSetup&) = delete;
  AppendSetup& operator=(const AppendSetup&) = delete;

  cuda::DeviceKvCache cache;
  std::size_t input_bytes;
  void *k = nullptr, *v = nullptr;
  cudaStream_t stream = nullptr;
};

// Append of one 32k-token chunk to one sequence (8 KV heads, d = 128): bytes read (K and V
// inputs) plus bytes written (codes and scales), over the median time of one append call on the
// GPU: the call is enqueued behind a wait (bench::launch_wait), as an engine's stream has work ahead
// of it, so its events time the kernels and not the host's launch latency. The same call timed
// from an idle stream (the host's enqueueing included) is printed beside it.
void run_append(const std::string& format, cuda::InputType type, int reps, double copy_gbs) {
  constexpr int kTokens = 32768;
  // Longer than the host takes to enqueue an append and two events.
  constexpr double kQueueWaitUs = 50;
  AppendSetup a(format, 1, kTokens, false, kTokens, type);
  const std::size_t written =
      std::size_t(kTokens) * AppendSetup::kHeads * kv_bytes_per_position(parse_kv_format(format), AppendSetup::kDim);
  const std::size_t bytes = 2 * a.input_bytes + written;
  std::vector<float> queued_ms, idle_ms;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  const auto time_call = [&](bool queued) {
    a.cache.reset(0, a.stream);
    check(cudaStreamSynchronize(a.stream), "reset");
    if (queued) check(bench::launch_wait(kQueueWaitUs, a.stream), "wait");
    cudaEventRecord(e0, a.stream);
    a.cache.append(0, a.k, a.v, kTokens, type, a.stream);
    cudaEventRecord(e1, a.stream);
    check(cudaEventSynchronize(e1), "append");
    float t = 0;
    cudaEventElapsedTime(&t, e0, e1);
    return t;
  };
  for (int i = 0; i < reps + 2; ++i) {  // alternated, so that both see the same clocks
    const float q = time_call(true), idle = time_call(false);
    if (i < 2) continue;
    queued_ms.push_back(q);
    idle_ms.push_back(idle);
  }
  a.cache.check_appends(a.stream);
  const double us = median(queued_ms) * 1e3;
  const double gbs = static_cast<double>(bytes) / (us * 1e-6) / 1e9;
  std::printf("| append %-6s | %s input | 32768 x 8 x 128 | %9.1f | %7.1f | %5.1f%% | %9.1f |\n", format.c_str(),
              input_name(type), us, gbs, 100.0 * gbs / copy_gbs, median(idle_ms) * 1e3);
  std::fflush(stdout);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
}

// A decode step of one layer as an engine runs it: append_step (one f16 token per sequence, its
// quantization and the counter commit) then decode_attention, against decode_attention alone, on a
// ring cache of `context` positions filled by appends (32/8 heads, d = 128). Also the decode with
// DecodeParams::lse followed by merge_attention_states with another state (what an engine adds to
// merge its own exact attention over a window of the newest tokens; that attention not included).
// Graph replays of kGraphSteps steps; the cache stays in L2 when it fits (b1 4k: 4.5 MB), as a
// layer's would not.
void run_step(const std::string& format, int batch, int context) {
  constexpr int kQHeads = 32, kReplays = 50;
  AppendSetup a(format, batch, context, true, context, cuda::InputType::f16);
  for (int b = 0; b < batch; ++b) a.cache.append(b, a.k, a.v, context, cuda::InputType::f16, a.stream);
  const std::size_t n_q = std::size_t(batch) * kQHeads * AppendSetup::kDim;
  const int rows = batch * kQHeads;
  float *q = nullptr, *out = nullptr, *lse = nullptr, *other = nullptr, *other_lse = nullptr;
  check(cudaMalloc(reinterpret_cast<void**>(&q), n_q * 4), "malloc q");
  check(cudaMalloc(reinterpret_cast<void**>(&out), n_q * 4), "malloc out");
  check(cudaMalloc(reinterpret_cast<void**>(&other), n_q * 4), "malloc other");
  check(cudaMalloc(reinterpret_cast<void**>(&lse), rows * 4), "malloc lse");
  check(cudaMalloc(reinterpret_cast<void**>(&other_lse), rows * 4), "malloc other lse");
  check(cudaMemsetAsync(q, 0, n_q * 4, a.stream), "q");
  check(cudaMemsetAsync(other, 0, n_q * 4, a.stream), "other");
  check(cudaMemsetAsync(other_lse, 0, rows * 4, a.stream), "other lse");  // lse 0: a state of mass 1
  DecodeParams p;
  p.q_heads = kQHeads;
  p.splits = g_splits;
  const ExecContext ctx{Backend::cuda, a.stream};
  Plan plan;
  plan.copies = kGraphSteps;  // one graph
  plan.graph_replays = kReplays;
  auto decode = [&](std::size_t) { cuda_backend::decode_attention(a.cache.view(), q, out, p, ctx); };
  auto step = [&](std::size_t) {
    a.cache.append_step(a.k, a.v, cuda::InputType::f16, a.stream);
    cuda_backend::decode_attention(a.cache.view(), q, out, p, ctx);
  };
  DecodeParams with_lse = p;
  with_lse.lse = lse;
  auto merged = [&](std::size_t) {
    cuda_backend::decode_attention(a.cache.view(), q, out, with_lse, ctx);
    cuda_backend::merge_attention_states(out, lse, other, other_lse, out, nullptr, rows, AppendSetup::kDim,
                                         OutputType::f32, ctx);
  };
  const double decode_us = graph_us_per_step(a.stream, plan, decode);
  const double step_us = graph_us_per_step(a.stream, plan, step);
  const double merged_us = graph_us_per_step(a.stream, plan, merged);
  check(cudaStreamSynchronize(a.stream), "step");
  a.cache.check_appends(a.stream);
  std::printf("| %-6s | %5d | %7d | %9.1f | %9.1f | %6.1f | %9.1f | %6.1f |\n", format.c_str(), batch, context,
              decode_us, step_us, step_us - decode_us, merged_us, merged_us - decode_us);
  std::fflush(stdout);
  for (float* ptr : {q, out, other, lse, other_lse}) cudaFree(ptr);
}

std::vector<std::string> split_list(const std::string& list) {
  std::vector<std::string> out;
  for (std::size_t pos = 0; pos != std::string::npos;) {
    const std::size_t comma = list.find(',', pos);
    out.push_back(list.substr(pos, comma == std::string::npos ? comma : comma - pos));
    pos = comma == std::string::npos ? comma : comma + 1;
  }
  return out;
}

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr, "bench_cuda: %s\n%s", message.c_str(), kUsage);
  std::exit(1);
}

// --floors: for each shape, the per-step time (graph replays, cold L2) of the split-K skeleton of a
// decode step (bench_read.hpp: the same bytes streamed by pairs x splits blocks, partials, a
// counter and the last split's merge, no arithmetic), best over split counts 1 to 128, 256 or 512
// threads per block and 4 or 8 loads in flight per thread; and the same streaming without the
// merge. What a single-launch split-K decode of these bytes costs on this card before any
// arithmetic, against which the targets are judged.
void run_floors(const Shape& s, const Plan& plan, const DevicePattern& pattern, const Bandwidth& bw) {
  const std::string head = fmt::format("| {:<6} | {:4} | {:>2}/{:<2} | {:5} | {:6} | {:9.1f} |", kv_format_name(s.format),
                                       s.head_dim, s.q_heads, s.kv_heads, s.batch, s.context,
                                       static_cast<double>(plan.bytes_read) / 1e6);
  if (plan.copies == 0 || s.context % 16 != 0) return (void)std::printf("%s skipped |\n", head.c_str());
  const Copies copies(s, plan, pattern);
  if (!copies.allocated()) return (void)std::printf("%s skipped: memory |\n", head.c_str());
  constexpr int kMaxSplits = 128;
  const int pairs = s.batch * s.kv_heads;
  float *partials = nullptr, *out = nullptr;
  unsigned* counters = nullptr;
  check(cudaMalloc(reinterpret_cast<void**>(&partials), std::size_t(pairs) * kMaxSplits * bench::kSplitPartialBytes),
        "malloc partials");
  check(cudaMalloc(reinterpret_cast<void**>(&out), std::size_t(pairs) * bench::kSplitPartialBytes), "malloc out");
  check(cudaMalloc(reinterpret_cast<void**>(&counters), std::size_t(pairs) * sizeof(unsigned)), "malloc counters");
  check(cudaMemset(counters, 0, std::size_t(pairs) * sizeof(unsigned)), "counters");
  cudaStream_t stream;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  auto probe_of = [&](std::size_t copy, int splits) {
    const CacheView v = copies.view(copy);
    bench::SplitReadProbe p;
    p.base[0] = static_cast<const uint8_t*>(v.k_codes);
    p.base[1] = static_cast<const uint8_t*>(v.v_codes);
    p.base[2] = reinterpret_cast<const uint8_t*>(v.scales);
    p.position_bytes[0] = row_bytes(s.format.key, s.head_dim);
    p.position_bytes[1] = row_bytes(s.format.value, s.head_dim);
    p.position_bytes[2] = sizeof(ScalePair);
    p.streams = 3;
    p.context = s.context;
    p.pairs = pairs;
    p.splits = splits;
    p.partials = partials;
    p.counters = counters;
    p.out = out;
    return p;
  };
  // Graph-step time of launch(probe) at every split count of at least 16 positions a split, up to
  // kMaxSplits: the best, its split count, and every count's time.
  struct Sweep {
    double us = 1e30;
    int splits = 0;
    std::string curve;  // splits:us
  };
  auto sweep = [&](auto&& launch) {
    Sweep r;
    for (int splits = 1; splits <= kMaxSplits && splits * 16 <= s.context; splits *= 2) {
      auto step = [&](std::size_t copy) { launch(probe_of(copy, splits)); };
      for (int i = 0; i < kWarmupLaunches; ++i) step(i);
      const double us = graph_us_per_step(stream, plan, step);
      r.curve += fmt::format("{}{}:{:.1f}", r.curve.empty() ? "" : " ", splits, us);
      if (us < r.us) r.us = us, r.splits = splits;
    }
    return r;
  };
  struct Best {
    Sweep sweep;
    int threads = 0, in_flight = 0;
  };
  Best merged, streamed;  // with the split merge; the streaming alone (partials stored, never merged)
  for (const bool merge : {true, false})
    for (const int threads : {256, 512})
      for (const int in_flight : {4, 8}) {
        const Sweep r = sweep([&](bench::SplitReadProbe p) {
          p.merge = merge;
          check(bench::launch_split_read(p, threads, in_flight, stream), "probe");
        });
        Best& best = merge ? merged : streamed;
        if (r.us < best.sweep.us) best = {r, threads, in_flight};
      }
  // The decode kernel's tile structure, with the merge (best over splits).
  std::string tiled;
  for (const bench::TiledCopies copies_kind : bench::kAllTiledCopies) {
    if (bench::launch_tiled_read(probe_of(0, 1), copies_kind, stream) == cudaErrorInvalidConfiguration) {
      tiled += " not run |";  // stages beyond shared memory, or bulk copies before sm_90
      continue;
    }
    const Sweep r = sweep([&](const bench::SplitReadProbe& p) {
      check(bench::launch_tiled_read(p, copies_kind, stream), "tiled probe");
    });
    tiled += fmt::format(" {:7.1f} ({}) |", r.us, r.splits);
  }
  check(cudaStreamSynchronize(stream), "probe");
  auto pct = [&](double us) { return 100.0 * gbs(plan.bytes_read, us) / bw.read_gbs; };
  std::printf("%s %7.1f | %d x %d x %d | %5.1f%% | %7.1f | %d x %d x %d | %5.1f%% |%s %s |\n", head.c_str(),
              merged.sweep.us, merged.sweep.splits, merged.threads, merged.in_flight, pct(merged.sweep.us),
              streamed.sweep.us, streamed.sweep.splits, streamed.threads, streamed.in_flight, pct(streamed.sweep.us),
              tiled.c_str(), merged.sweep.curve.c_str());
  std::fflush(stdout);
  cudaFree(partials);
  cudaFree(out);
  cudaFree(counters);
  cudaStreamDestroy(stream);
}

// --floors: a step of nothing: graph replays of an empty kernel of 1 block and of one per SM.
void print_launch_floor() {
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), "attribute");
  cudaStream_t stream;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  Plan plan;
  plan.copies = kGraphSteps;
  plan.graph_replays = kMaxGraphReplays;
  for (int blocks : {1, sms, 2 * sms}) {
    const double us = graph_us_per_step(stream, plan, [&](std::size_t) { check(bench::launch_empty(blocks, stream), "empty"); });
    std::printf("empty kernel, %d blocks: %.2f us per graph step\n", blocks, us);
  }
  cudaStreamDestroy(stream);
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

struct Options {
  std::string grid = "issue", json;
  std::vector<KvFormat> formats;  // empty: the grid's default
  int reps = 200;
  bool append = false, plan_only = false, floors = false;
  std::vector<std::string> append_formats{"tq4"};
  int batch = 0, context = 0, head_dim = 0;  // row filters; 0 keeps every value
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--grid" && has_value) {
      o.grid = argv[++i];
      if (o.grid != "full" && o.grid != "issue" && o.grid != "quick" && o.grid != "batches")
        usage_error(fmt::format("--grid {}: expected full, issue, quick or batches", o.grid));
    } else if (a == "--quick") {
      o.grid = "quick";
    } else if (a == "--append" || a == "--extras") {
      o.append = true;
    } else if (a == "--append-formats" && has_value) {
      o.append = true;
      o.append_formats = split_list(argv[++i]);
      for (const auto& name : o.append_formats) {
        try {
          (void)parse_kv_format(name);
        } catch (const Error& e) {
          usage_error(fmt::format("--append-formats: {}", e.what()));
        }
      }
    } else if (a == "--floors") {
      o.floors = true;
    } else if (a == "--plan") {
      o.plan_only = true;
    } else if (a == "--json" && has_value) {
      o.json = argv[++i];
    } else if (a == "--reps" && has_value) {
      o.reps = std::atoi(argv[++i]);
      if (o.reps < 1) usage_error(fmt::format("--reps {}: expected a positive count", argv[i]));
    } else if ((a == "--batch" || a == "--context" || a == "--head-dim") && has_value) {
      const int v = std::atoi(argv[++i]);
      if (v < 1) usage_error(fmt::format("{} {}: expected a positive number", a, argv[i]));
      (a == "--batch" ? o.batch : a == "--context" ? o.context : o.head_dim) = v;
    } else if (a == "--splits" && has_value) {
      g_splits = std::atoi(argv[++i]);
      if (g_splits < 1) usage_error(fmt::format("--splits {}: expected a positive count", argv[i]));
    } else if (a == "--copies" && has_value) {
      g_copies_override = std::strtoul(argv[++i], nullptr, 10);
      if (g_copies_override == 0) usage_error(fmt::format("--copies {}: expected a positive count", argv[i]));
    } else if (a == "--formats" && has_value) {
      for (const auto& name : split_list(argv[++i])) {
        KvFormat f;
        try {
          f = parse_kv_format(name);
        } catch (const Error& e) {
          usage_error(fmt::format("--formats: {}", e.what()));
        }
        if (!cuda_detail::decode_pair_built(f)) {
          std::string built;
          for (const auto& b : built_pairs()) built += (built.empty() ? "" : ",") + kv_format_name(b);
          usage_error(fmt::format("--formats: {} has no CUDA kernels in this build (built: {})", name, built));
        }
        o.formats.push_back(f);
      }
    } else {
      usage_error(fmt::format("unknown or incomplete option {}", a));
    }
  }
  return o;
}

std::vector<Shape> unfiltered_grid(const Options& o) {
  if (o.grid != "issue") {
    const std::vector<KvFormat> formats = o.formats.empty() ? built_pairs() : o.formats;
    if (o.grid == "full") return full_grid(formats);
    if (o.grid == "quick") return quick_grid(formats);
    return batches_grid(formats);  // parse() accepts no other grid
  }
  std::vector<KvFormat> issue_formats;
  for (const char* name : {"tq4", "k8v4", "tq3", "tq2", "f16"}) issue_formats.push_back(parse_kv_format(name));
  return issue_grid(o.formats.empty() ? issue_formats : o.formats);
}

std::vector<Shape> grid_of(const Options& o) {
  std::vector<Shape> grid = unfiltered_grid(o);
  std::erase_if(grid, [&](const Shape& s) {
    return (o.batch && s.batch != o.batch) || (o.context && s.context != o.context) ||
           (o.head_dim && s.head_dim != o.head_dim);
  });
  if (grid.empty()) usage_error(fmt::format("no row of grid {} has batch {}, context {}, head dim {} (0: any)",
                                            o.grid, o.batch, o.context, o.head_dim));
  return grid;
}

// The free device memory a row's copies may use (freed copies of the previous row included).
std::size_t free_device_bytes() {
  std::size_t free = 0, total = 0;
  check(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
  return free;
}

// Device memory --plan assumes without a GPU: an H100 80GB's free memory after the CUDA context.
constexpr std::size_t kPlanFreeBytesWithoutDevice = std::size_t{79} << 30;

void print_plan(const Options& o, const std::vector<Shape>& grid, bool have_device) {
  const std::size_t free = have_device ? free_device_bytes() : kPlanFreeBytesWithoutDevice;
  std::printf("plan: grid %s, %zu shapes, free device memory %.1f GiB%s\n", o.grid.c_str(), grid.size(),
              static_cast<double>(free) / (1 << 30), have_device ? "" : " (assumed: no device)");
  std::printf("| format | d | heads | batch | context | MB read | copies | reps | graph replays | est. s |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  double total = 0;
  std::size_t skipped = 0;
  for (const Shape& s : grid) {
    const Plan p = make_plan(s, free, o.reps);
    const double secs = p.copies ? estimate_seconds(p) : 0;
    total += secs;
    skipped += p.copies == 0;
    std::printf("| %s | %d | %d/%d | %d | %d | %.1f | %s | %d | %d | %.3f |\n", kv_format_name(s.format).c_str(),
                s.head_dim, s.q_heads, s.kv_heads, s.batch, s.context, static_cast<double>(p.bytes_read) / 1e6,
                p.copies ? std::to_string(p.copies).c_str() : "skipped: memory", p.reps, p.graph_replays, secs);
  }
  std::printf("\nestimate: %.0f s for %zu rows (%zu skipped: memory), at %.1f TB/s read, %.0f us floor per step\n",
              total, grid.size(), skipped, kPlanReadBytesPerSecond / 1e12,
              kPlanStepFloorSeconds * 1e6);
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  try {
    const std::vector<Shape> grid = grid_of(o);
    const bool have_device = tqkv::cuda::device_count() > 0;
    if (o.plan_only) {
      print_plan(o, grid, have_device);
      return 0;
    }
    if (!have_device) {
      std::printf("bench_cuda: no CUDA device\n");
      return 0;
    }
    const auto start = std::chrono::steady_clock::now();
    RunInfo info;
    info.device = tqkv::cuda_backend::device_description();
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    info.card = prop.name;
    info.date = utc_now();
    info.max_reps = o.reps;
    info.bw = measure_bandwidth();
    std::printf("device: %s\n", info.device.c_str());
    std::printf("read-only kernel: %.0f GB/s; device-to-device copy: %.0f GB/s (read + write)\n\n", info.bw.read_gbs,
                info.bw.copy_gbs);
    const DevicePattern pattern(make_pattern(0xbe9c4));
    if (o.floors) {
      print_launch_floor();
      std::printf("\n| format | d | heads | batch | context | MB read | skeleton us/step | splits x threads x loads | %% read "
                  "| streaming alone us/step | splits x threads x loads | %% read");
      for (const bench::TiledCopies c : bench::kAllTiledCopies) std::printf(" | tiles: %s (splits)", bench::tiled_copies_name(c));
      std::printf(" | skeleton splits:us |\n|");
      for (std::size_t i = 0; i < 13 + std::size(bench::kAllTiledCopies); ++i) std::printf(" --- |");
      std::printf("\n");
      for (const Shape& s : grid) run_floors(s, make_plan(s, free_device_bytes(), o.reps), pattern, info.bw);
      return 0;
    }
    std::vector<Row> rows;
    print_header();
    for (const Shape& s : grid) {
      const std::size_t first = rows.size();
      try {
        run(s, make_plan(s, free_device_bytes(), o.reps), pattern, rows);
      } catch (const Error& e) {
        for (std::size_t i = first; i < rows.size(); ++i) rows[i].status = fmt::format("error: {}", e.what());
      }
      for (std::size_t i = first; i < rows.size(); ++i) print_row(rows[i], info.bw);
      if (!o.json.empty()) write_json(o.json, info, rows);
    }
    const auto timed = std::count_if(rows.begin(), rows.end(), [](const Row& r) { return r.status == "ok"; });
    std::printf("\n%zu rows: %td timed, %td not (see status); %.0f s\n", rows.size(), timed,
                static_cast<std::ptrdiff_t>(rows.size()) - timed,
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    if (!o.append) return 0;
    std::printf("\n| append | input | chunk | median us | GB/s (read + written) | %% copy | from an idle stream, us |\n"
                "| --- | --- | --- | --- | --- | --- | --- |\n");
    for (const auto& format : o.append_formats)
      for (const auto type : {cuda::InputType::f16, cuda::InputType::bf16, cuda::InputType::f32})
        run_append(format, type, o.grid == "quick" ? 5 : 20, info.bw.copy_gbs);
    std::printf("\n| decode step | batch | context | decode graph us/step | append_step + decode graph us/step | append us "
                "| decode (lse) + merge graph us/step | merge us |\n"
                "| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (const auto& [b, ctx_len] : {std::pair{1, 4096}, {8, 4096}, {1, 16384}, {8, 16384}})
      run_step("tq4", b, ctx_len);
  } catch (const tqkv::Error& e) {
    std::fprintf(stderr, "bench_cuda: %s\n", e.what());
    return 1;
  }
  return 0;
}
