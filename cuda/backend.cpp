// Host side of CUDA decode attention: validation with messages naming the parameter, the split
// choice, the workspace, and the launch. No host synchronisation or allocation on the call path
// once the per-device workspace exists.
#include "backend.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "host_util.hpp"
#include "launch.hpp"
#include "tqkv/error.hpp"

namespace tqkv::cuda_detail {

void check_cuda(cudaError_t err, std::string_view what) {
  if (err != cudaSuccess)
    raise(Status::backend_error,
          fmt::format("{}: CUDA error {} ({})", what, cudaGetErrorName(err), cudaGetErrorString(err)));
}

void require_device(std::string_view what) {
  if (cuda_backend::device_count() == 0)
    raise(Status::backend_unavailable, fmt::format("{}: no CUDA device is visible", what));
}

void require_device_pointer(const void* p, std::string_view what, std::string_view name) {
  if (p == nullptr) raise(Status::invalid_argument, fmt::format("{}: {} is null", what, name));
  if (!cuda_backend::is_device_pointer(p))
    raise(Status::invalid_argument,
          fmt::format("{}: {} = {} is not device memory", what, name, fmt::ptr(p)));
}

namespace {

// Upper bound on params.splits (more only adds empty blocks and workspace).
constexpr int kMaxSplits = 4096;
// The cached workspace's first allocation: enough for the usual shapes, so later calls of a
// session do not reallocate.
constexpr std::size_t kInitialWorkspaceBytes = std::size_t{32} << 20;
constexpr std::size_t kWorkspaceAlignment = 256;

int sm_count() {
  int count = 0;
  check_cuda(current_sm_count(&count), "decode_attention: the device's SM count");
  return count;
}

// Resident decode blocks per SM of (format pair, head dim) on the current device, cached.
int blocks_per_sm(KvFormat format, int head_dim) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int, int, int>, int> cache;
  int device = 0;
  check_cuda(cudaGetDevice(&device), "decode_attention: cudaGetDevice");
  const auto key = std::make_tuple(device, int(format.key), int(format.value), head_dim);
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  int blocks = 0;
  check_cuda(decode_blocks_per_sm(format, head_dim, &blocks), "decode_attention: occupancy query");
  blocks = std::max(blocks, 1);
  cache.emplace(key, blocks);
  return blocks;
}

int head_chunks(const CacheView& c, const DecodeParams& p) {
  const int group = p.q_heads / c.kv_heads;
  return (group + kMaxHeadsPerBlock - 1) / kMaxHeadsPerBlock;
}

// sms: the current device's SM count (sm_count()).
int resolve_splits(const CacheView& c, const DecodeParams& p, int sms) {
  if (p.splits > 0) return p.splits;
  const int64_t base_blocks = int64_t{c.batch} * c.kv_heads * head_chunks(c, p);
  // A split streams at least one granule (every worker of the block gets work).
  const int granule = kDecodeSplitGranule;
  const int64_t reach = decode_reach(c, p.window);
  const int64_t granules = (reach + granule - 1) / granule;
  // Fill one wave of resident blocks and no more: a partial second wave costs as much as a full one.
  // Past kManySplits splits, one block per SM instead: the last block of each sequence and head
  // merges every split's partial, and at batch 1 (8 KV heads) 16 splits beat two blocks per SM
  // up to 16k positions (r63, same machine: tq4 d = 128 4k 10.6 against 12.5 us, 16k 16.2 / 18.3;
  // tq3, tq2 likewise; d = 64 4k and 16k 5-14 % faster). Past 16k only d >= 128 with tq4/tq8/f16
  // keys gains (tq4 d = 128 64k 37.1 / 39.1); d = 64 (64k +9 %, 128k +17 %) and the
  // instruction-bound tq2/tq3 loops (64k +1-4 %) lose more to the halved occupancy than the merge
  // gains. Batch 8 and up kept two blocks per SM (r56: their 4 splits were the fastest with single tiles;
  // tq4 at d = 128 now takes its lone pairs below, r191).
  // One block per SM also gives tq4 at d <= 128 and tq2 at d = 128 tile pairs in blocks that
  // have their SM alone, and tq3's pairs an SM each (decode_pairs_alone); where that gives every
  // worker at least kLonePairsMinTiles tiles, it pays at any head dim and for tq3 and tq2 too (r182,
  // 8 KV heads, against 33 splits: tq4 d = 64 64k 23.9 -> 21.2 us, 128k 38.5 -> 35.7; r185, tq3
  // with the SM reserved: d = 128 64k 32.3 -> 29.9, d = 64 24.5 -> 23.3; r227, tq2 d = 128 64k
  // 26.0 -> 23.6).
  constexpr int64_t kManySplits = 16;
  constexpr int64_t kShortReach = 16384;
  constexpr int64_t kLonePairsMinTiles = 32;
  const bool instruction_bound = c.format.key == Format::tq2 || c.format.key == Format::tq3;
  const int64_t per_sm_splits = sms / base_blocks;  // one block per SM
  const int64_t one_per_sm = std::max<int64_t>(kManySplits, per_sm_splits);
  const bool pairs_alone = decode_pairs_alone(c.format, c.head_dim, p.q_heads / c.kv_heads);
  const bool lone_pairs_pay = reach / one_per_sm >= kLonePairsMinTiles * granule && pairs_alone;
  const bool fewer_blocks_pay = reach <= kShortReach || (c.head_dim >= 128 && !instruction_bound) || lone_pairs_pay;
  const int64_t slots = int64_t{blocks_per_sm(c.format, c.head_dim)} * sms;
  int64_t wanted = std::max<int64_t>(1, slots / base_blocks);
  if (wanted > kManySplits && fewer_blocks_pay) wanted = one_per_sm;
  // Below kManySplits (batch >= 3 at 8 KV heads, batch 1 at 32 KV heads), tq4 at d = 128 still
  // takes one block per SM with its lone pairs where that leaves at least 2 splits with pairs and
  // its grid fills the SMs at least as fully as the other fills its slots. Graph us, 32/8 heads,
  // one block per SM against two (r191, r195): batch 2 (8 splits against 16) 16k 20.5 -> 19.2, 64k
  // 59.9 -> 58.3; batch 4 (4 / 8) 4k 13.0 -> 12.3, 16k 34.0 -> 32.4; batch 5 (3 / 6, both 91 %
  // full) 16k 42.2 -> 41.3; batch 7 (2 / 4, both 85 %) 16k 56.6 -> 52.8, 64k 201.0 -> 194.9; batch 8
  // (2 / 4) 16k 59.9 -> 58.1, 64k 217.5 -> 211.9, 128k 420.0 -> 421.4; batch 1 at 32/32 (4 / 8) 16k
  // 33.9 -> 32.2, 128k 216.9 -> 212.1. Not where the grid would be emptier: batch 6 (2 splits, 96
  // blocks for 132 SMs against 240 for 264 slots) 64k 168.9 -> 189.2, batch 3 (5 / 11, 91 % against
  // 100 %) 64k 85.6 -> 87.8. r189/r190: d = 64 gained at 16k/64k but lost at 1k, 4k and 128k; tq3
  // lost, k8v4 stayed: not those.
  const bool lone_grid_as_full = per_sm_splits * slots >= wanted * sms;  // blocks / SMs >= blocks / slots
  if (wanted <= kManySplits && per_sm_splits >= 2 && lone_grid_as_full && c.format.key == Format::tq4 &&
      c.head_dim == 128 && pairs_alone && tile_pairs_pay(static_cast<int>(reach), static_cast<int>(per_sm_splits)))
    wanted = per_sm_splits;
  // More blocks than slots: a partial last wave leaves slots idle. From kShortReach positions, take
  // the split count (up to 4) whose waves are fullest when it fills them clearly better than one
  // split (r143: 9/3 heads at d = 64 and batch 128 are 384 blocks in 264 slots, 1.45 waves; 2
  // splits, 2.9 waves, were 11-14 % faster for tq4 at 16k-128k, 12 % for k8v8 at 128k, and slower
  // at 1k; layouts whose waves are already full lost 0.5-4 % with 2 splits).
  if (base_blocks > slots && reach >= kShortReach) {
    auto fullness = [&](int64_t s) {
      const int64_t blocks = s * base_blocks;
      return static_cast<double>(blocks) / static_cast<double>((blocks + slots - 1) / slots * slots);
    };
    constexpr double kClearlyFuller = 0.1;
    int64_t best = 1;
    for (int64_t s = 2; s <= 4; ++s)
      if (fullness(s) > fullness(best) + (best == 1 ? kClearlyFuller : 0.0)) best = s;
    wanted = best;
  }
  const int64_t useful = std::max<int64_t>(1, granules);
  return static_cast<int>(std::clamp<int64_t>(std::min(wanted, useful), 1, kMaxSplits));
}

// Workspace of a multi-split launch: the split counters (DecodeLaunch::counters) first, in a
// region of fixed size, so that every call finds them at the same place whatever its shape: the
// counters are zero between calls, while the rest of the workspace holds any call's leftovers.
// Then the partial outputs and their (max, denominator), each part 256-byte aligned.
constexpr std::size_t kSplitCounters = 16384;
struct WorkspaceLayout {
  std::size_t o_offset = 0, md_offset = 0, bytes = 0;
};
WorkspaceLayout workspace_layout(const CacheView& c, const DecodeParams& p, int splits) {
  if (splits <= 1) return {};
  auto align = [](std::size_t n) { return (n + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment; };
  const std::size_t parts = std::size_t(c.batch) * p.q_heads * splits;
  WorkspaceLayout l;
  l.o_offset = align(kSplitCounters * sizeof(unsigned));
  l.md_offset = l.o_offset + align(parts * c.head_dim * sizeof(float));
  l.bytes = l.md_offset + parts * 2 * sizeof(float);
  return l;
}
std::size_t workspace_bytes_for(const CacheView& c, const DecodeParams& p, int splits) {
  return workspace_layout(c, p, splits).bytes;
}

// The per-device workspace used when the caller gives none. Allocated on the first call that
// needs one; grown (outside stream capture only) if a later shape needs more.
void* cached_workspace(std::size_t bytes, cudaStream_t stream) {
  static std::mutex mutex;
  static std::vector<std::pair<void*, std::size_t>> per_device;
  int device = 0;
  check_cuda(cudaGetDevice(&device), "decode_attention: cudaGetDevice");
  std::lock_guard<std::mutex> lock(mutex);
  if (per_device.size() <= static_cast<std::size_t>(device)) per_device.resize(device + 1, {nullptr, 0});
  auto& [ptr, size] = per_device[device];
  if (size >= bytes) return ptr;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  check_cuda(cudaStreamIsCapturing(stream, &capture), "decode_attention: cudaStreamIsCapturing");
  if (capture != cudaStreamCaptureStatusNone)
    raise(Status::invalid_argument,
          fmt::format("decode_attention: the cached workspace must grow to {} bytes, which cannot "
                      "happen during stream capture; pass ExecContext::workspace (see "
                      "decode_workspace_bytes) or run once before capturing",
                      bytes));
  if (ptr != nullptr) check_cuda(cudaFree(ptr), "decode_attention: cudaFree(workspace)");
  ptr = nullptr;
  size = 0;
  const std::size_t want = std::max(bytes, kInitialWorkspaceBytes);
  check_cuda(cudaMalloc(&ptr, want), fmt::format("decode_attention: cudaMalloc({}) of the workspace", want));
  // The split counters must start at zero; decode leaves them at zero.
  check_cuda(cudaMemset(ptr, 0, want), "decode_attention: cudaMemset of the workspace");
  size = want;
  return ptr;
}

// lambda of the levels at a device address (tq2, tq3, tq4; code_level_lambda). A registered
// DeviceKvCache codebook is authoritative; another address is read back once (synchronous) and
// remembered; during stream capture an unseen address gets 1 (plain fp16 levels, less precise).
struct LevelsRegistry {
  std::mutex mutex;
  std::map<const float*, float> registered, read_back;
  std::map<std::vector<float>, float> by_values;
  float lambda_of(const std::vector<float>& levels) {  // callers hold the mutex
    auto it = by_values.find(levels);
    if (it == by_values.end())
      it = by_values.emplace(levels, code_level_lambda(levels.data(), static_cast<int>(levels.size()))).first;
    return it->second;
  }
};
LevelsRegistry& levels_registry() {
  static LevelsRegistry r;
  return r;
}

// What decode needs to know of one side's codebook levels: their lambda, and whether they are a
// registered (DeviceKvCache) codebook, uploaded by a synchronous copy when the cache was made and
// never written since ("settled": the kernel may read them before the previous kernel finishes).
struct LevelsInfo {
  float lambda = 1.0f;
  bool settled = false;
};
LevelsInfo levels_info(Format f, const float* device_levels, cudaStream_t stream) {
  if (f == Format::f16) return {1.0f, true};  // no levels
  const bool has_lambda = f == Format::tq2 || f == Format::tq3 || f == Format::tq4;
  LevelsRegistry& r = levels_registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (auto it = r.registered.find(device_levels); it != r.registered.end())
    return {has_lambda ? it->second : 1.0f, true};
  if (!has_lambda) return {1.0f, false};
  if (auto it = r.read_back.find(device_levels); it != r.read_back.end()) return {it->second, false};
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  check_cuda(cudaStreamIsCapturing(stream, &capture), "decode_attention: cudaStreamIsCapturing");
  if (capture != cudaStreamCaptureStatusNone) return {1.0f, false};
  std::vector<float> levels(std::size_t{1} << format_bits(f));
  check_cuda(cudaMemcpy(levels.data(), device_levels, levels.size() * sizeof(float), cudaMemcpyDeviceToHost),
             "decode_attention: reading the codebook levels");
  const float lambda = r.lambda_of(levels);
  r.read_back.emplace(device_levels, lambda);
  return {lambda, false};
}

}  // namespace

void register_levels(const float* device_levels, const float* host_levels, int count) {
  LevelsRegistry& r = levels_registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.registered[device_levels] = r.lambda_of(std::vector<float>(host_levels, host_levels + count));
  r.read_back.erase(device_levels);
}

void unregister_levels(const float* device_levels) noexcept {
  LevelsRegistry& r = levels_registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.registered.erase(device_levels);
  r.read_back.erase(device_levels);
}

namespace {

void validate_for_device(const CacheView& c, const DecodeParams& p, const char* what) {
  validate(c, p);
  if (!decode_pair_built(c.format))
    raise(Status::unsupported,
          fmt::format("{}: format pair {} has no CUDA kernels in this build (configure with "
                      "-DTQKV_CUDA_ALL_PAIRS=ON for every pair)",
                      what, kv_format_name(c.format)));
  if (!decode_head_dim_built(c.head_dim))
    raise(Status::unsupported,
          fmt::format("{}: head_dim = {} has no CUDA kernels (built: 64, 80, 96, 128, 256, 512, 576)",
                      what, c.head_dim));
  if (c.batch > 65535)
    raise(Status::invalid_argument, fmt::format("{}: batch = {} exceeds 65535 (CUDA grid)", what, c.batch));
  if (int64_t{c.kv_heads} * head_chunks(c, p) > 65535)
    raise(Status::invalid_argument,
          fmt::format("{}: kv_heads = {} with q_heads = {} exceeds the CUDA grid", what, c.kv_heads, p.q_heads));
  if (p.splits > kMaxSplits)
    raise(Status::invalid_argument, fmt::format("{}: splits = {} exceeds {}", what, p.splits, kMaxSplits));
  // Automatic splits stay at 1 for shapes this large (they fill the GPU without splitting).
  const int64_t merge_groups = int64_t{c.batch} * c.kv_heads * head_chunks(c, p);
  if (p.splits > 1 && merge_groups > static_cast<int64_t>(kSplitCounters))
    raise(Status::invalid_argument,
          fmt::format("{}: splits = {} with batch x kv_heads x query-head chunks = {} exceeds the {} split "
                      "counters of the workspace (use splits = 0 or 1)",
                      what, p.splits, merge_groups, kSplitCounters));
}

}  // namespace
}  // namespace tqkv::cuda_detail

namespace tqkv::cuda_backend {
using namespace tqkv::cuda_detail;

int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no driver/device" error
    return 0;
  }
  return n;
}

bool is_device_pointer(const void* p) noexcept {
  if (p == nullptr) return false;
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

std::string device_description() {
  if (device_count() == 0) return {};
  int device = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&device) != cudaSuccess || cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return {};
  }
  return fmt::format("{}, sm_{}{}, {} SMs, {} MiB", prop.name, prop.major, prop.minor,
                     prop.multiProcessorCount, prop.totalGlobalMem >> 20);
}

std::size_t decode_workspace_bytes(const CacheView& cache, const DecodeParams& params) {
  require_device("decode_workspace_bytes");
  validate_for_device(cache, params, "decode_workspace_bytes");
  return workspace_bytes_for(cache, params, resolve_splits(cache, params, sm_count()));
}

void decode_attention(const CacheView& c, const float* q, void* out, const DecodeParams& p,
                      const ExecContext& ctx) {
  constexpr const char* what = "decode_attention (cuda)";
  require_device(what);
  validate_for_device(c, p, what);
  require_device_pointer(q, what, "q");
  require_device_pointer(out, what, "out");
  require_device_pointer(c.k_codes, what, "cache.k_codes");
  require_device_pointer(c.v_codes, what, "cache.v_codes");
  require_device_pointer(c.scales, what, "cache.scales");
  require_device_pointer(c.tokens, what, "cache.tokens");
  require_device_pointer(c.sign_bits, what, "cache.sign_bits");
  if (is_quantized(c.format.key)) require_device_pointer(c.k_levels, what, "cache.k_levels");
  if (is_quantized(c.format.value)) require_device_pointer(c.v_levels, what, "cache.v_levels");
  if (p.sinks) require_device_pointer(p.sinks, what, "params.sinks");
  if (p.lse) require_device_pointer(p.lse, what, "params.lse");
  // 16-byte loads of rows (row bytes are multiples of 16), 4-byte loads of scales and q.
  if (!is_aligned(c.k_codes, 16) || !is_aligned(c.v_codes, 16))
    raise(Status::invalid_argument,
          fmt::format("{}: cache codes must be 16-byte aligned (k_codes = {}, v_codes = {})", what,
                      fmt::ptr(c.k_codes), fmt::ptr(c.v_codes)));
  if (!is_aligned(q, 4) || !is_aligned(c.scales, 4) || !is_aligned(out, 2) ||
      !is_aligned(p.lse, 4))
    raise(Status::invalid_argument, fmt::format("{}: q, scales, out or params.lse are misaligned", what));

  auto stream = static_cast<cudaStream_t>(ctx.stream);
  DecodeLaunch launch;
  launch.cache = c;
  launch.q = q;
  launch.out = out;
  launch.sinks = p.sinks;
  launch.lse = p.lse;
  launch.scale = p.scale > 0 ? p.scale : 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  launch.softcap = p.softcap;
  launch.window = p.window;
  launch.q_heads = p.q_heads;
  launch.group = p.q_heads / c.kv_heads;
  launch.head_chunks = head_chunks(c, p);
  const int sms = sm_count();
  launch.splits = resolve_splits(c, p, sms);
  launch.one_block_per_sm =
      int64_t{launch.splits} * c.kv_heads * launch.head_chunks * c.batch <= int64_t{sms};
  launch.out_type = p.out_type;
  launch.timeline = decode_timeline();
  const LevelsInfo k_levels = levels_info(c.format.key, c.k_levels, stream);
  const LevelsInfo v_levels = levels_info(c.format.value, c.v_levels, stream);
  launch.k_lambda = k_levels.lambda;
  launch.v_lambda = v_levels.lambda;
  launch.codebook_settled = k_levels.settled && v_levels.settled;
  const std::size_t need = workspace_bytes_for(c, p, launch.splits);
  if (need > 0) {
    void* ws = ctx.workspace;
    if (ws != nullptr) {
      if (ctx.workspace_bytes < need)
        raise(Status::invalid_argument,
              fmt::format("{}: workspace_bytes = {} is smaller than the {} bytes needed for {} splits", what,
                          ctx.workspace_bytes, need, launch.splits));
      require_device_pointer(ws, what, "ctx.workspace");
      if (!is_aligned(ws, kWorkspaceAlignment))
        raise(Status::invalid_argument,
              fmt::format("{}: ctx.workspace must be {}-byte aligned", what, kWorkspaceAlignment));
    } else {
      ws = cached_workspace(need, stream);
    }
    const WorkspaceLayout layout = workspace_layout(c, p, launch.splits);
    launch.counters = static_cast<unsigned*>(ws);
    launch.part_o = reinterpret_cast<float*>(static_cast<uint8_t*>(ws) + layout.o_offset);
    launch.part_md = reinterpret_cast<float*>(static_cast<uint8_t*>(ws) + layout.md_offset);
  }
  check_cuda(launch_decode(launch, stream), what);
}

void merge_attention_states(const void* out_a, const float* lse_a, const void* out_b, const float* lse_b,
                            void* out, float* lse, int rows, int head_dim, OutputType type,
                            const ExecContext& ctx) {
  constexpr const char* what = "merge_attention_states (cuda)";
  require_device(what);
  validate_merge(out_a, lse_a, out_b, lse_b, out, rows, head_dim, type);
  if (rows == 0) return;
  require_device_pointer(out_a, what, "out_a");
  require_device_pointer(lse_a, what, "lse_a");
  require_device_pointer(out_b, what, "out_b");
  require_device_pointer(lse_b, what, "lse_b");
  require_device_pointer(out, what, "out");
  if (lse) require_device_pointer(lse, what, "lse");
  const std::size_t element = output_type_bytes(type);
  if (!is_aligned(out_a, element) || !is_aligned(out_b, element) || !is_aligned(out, element) || !is_aligned(lse_a, 4) ||
      !is_aligned(lse_b, 4) || !is_aligned(lse, 4))
    raise(Status::invalid_argument, fmt::format("{}: an output or lse array is misaligned", what));
  const MergeStatesLaunch launch{out_a, lse_a, out_b, lse_b, out, lse, rows, head_dim, type};
  check_cuda(launch_merge_states(launch, static_cast<cudaStream_t>(ctx.stream)), what);
}

}  // namespace tqkv::cuda_backend
