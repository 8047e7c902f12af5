// DeviceKvCache: the KvCache layout in device memory, with quantize-on-append launches.
#include <cuda_runtime_api.h>

#include <cmath>
#include <limits>
#include <vector>

#include <fmt/format.h>

#include "backend.hpp"
#include "host_util.hpp"
#include "launch.hpp"
#include "tqkv/cuda.hpp"
#include "tqkv/error.hpp"

namespace tqkv::cuda_detail {

// Equal buckets spanning the boundaries from bucket 2 to bucket kCodeBuckets - 2. The Lloyd-Max
// boundaries of tq2 to tq4 lie several buckets apart; this checks it on the very map the kernel
// evaluates (code_bucket).
std::vector<CodeBucket> make_code_grid(const std::vector<float>& bounds, CodeGrid& grid) {
  const float lo = bounds.front(), hi = bounds.back();
  grid.scale = static_cast<float>((kCodeBuckets - 4) / ((kCodeBuckets - 1) * (static_cast<double>(hi) - lo)));
  grid.offset = static_cast<float>(2.0 / (kCodeBuckets - 1) - lo * static_cast<double>(grid.scale));
  std::vector<CodeBucket> table(kCodeBuckets, CodeBucket{std::numeric_limits<float>::infinity(), 0});
  std::vector<bool> holds(kCodeBuckets, false);
  int previous = -1;
  for (std::size_t i = 0; i < bounds.size(); ++i) {
    const int b = code_bucket(bounds[i], grid.scale, grid.offset);
    if (b <= previous)
      raise(Status::internal, fmt::format("make_code_grid: codebook boundaries {} and {} share a code bucket",
                                          bounds[i - 1], bounds[i]));
    table[b] = CodeBucket{bounds[i], static_cast<uint32_t>(i)};
    holds[b] = true;
    previous = b;
  }
  // A bucket without a boundary: every boundary of the lower buckets is below its z.
  uint32_t below = 0;
  for (int b = 0; b < kCodeBuckets; ++b) {
    if (holds[b]) below = table[b].base + 1;
    else table[b].base = below;
  }
  return table;
}

}  // namespace tqkv::cuda_detail

namespace tqkv::cuda {
using namespace tqkv::cuda_detail;

int device_count() noexcept { return cuda_backend::device_count(); }

namespace {

// A device allocation freed on destruction.
struct DeviceBuffer {
  void* ptr = nullptr;
  std::size_t bytes = 0;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr) (void)cudaFree(ptr);
  }
  void allocate(std::size_t n, const char* name) {
    bytes = n;
    check_cuda(cudaMalloc(&ptr, n == 0 ? 1 : n), fmt::format("DeviceKvCache: cudaMalloc({}) for {}", n, name));
    check_cuda(cudaMemset(ptr, 0, n == 0 ? 1 : n), fmt::format("DeviceKvCache: cudaMemset of {}", name));
  }
  void upload(const void* host, std::size_t n, const char* name) {
    check_cuda(cudaMemcpy(ptr, host, n, cudaMemcpyHostToDevice), fmt::format("DeviceKvCache: upload of {}", name));
  }
  template <typename T>
  std::vector<T> download(const char* name) const {
    std::vector<T> out(bytes / sizeof(T));
    check_cuda(cudaMemcpy(out.data(), ptr, bytes, cudaMemcpyDeviceToHost),
               fmt::format("DeviceKvCache: download of {}", name));
    return out;
  }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr); }
};

const Codebook* codebook_for(Format f, const CacheConfig& c) {
  return is_quantized(f) ? &codebook(c.codebook, format_bits(f), c.head_dim) : nullptr;
}

bool same_layout(const CacheConfig& a, const CacheConfig& b) {
  return a.batch == b.batch && a.kv_heads == b.kv_heads && a.head_dim == b.head_dim &&
         a.capacity == b.capacity && a.format == b.format && a.ring == b.ring && a.layer == b.layer &&
         a.seed == b.seed && a.sign_flips == b.sign_flips && a.scale_rule == b.scale_rule &&
         a.codebook == b.codebook;
}

InputKind input_kind(InputType t) {
  switch (t) {
    case InputType::f32: return InputKind::f32;
    case InputType::f16: return InputKind::f16;
    case InputType::bf16: return InputKind::bf16;
  }
  raise(Status::invalid_argument, fmt::format("append: input type = {} is not an input type", static_cast<int>(t)));
}

}  // namespace

struct DeviceKvCache::Impl {
  CacheConfig config;
  int device = 0;
  std::size_t k_row_bytes = 0, v_row_bytes = 0;
  DeviceBuffer k_codes, v_codes, scales, tokens, sign_bits;
  DeviceBuffer k_levels, v_levels, k_boundaries, v_boundaries, k_buckets, v_buckets, status;
  CodeGrid k_grid, v_grid;  // buckets point into k_buckets / v_buckets
  std::vector<int64_t> tokens_mirror;
  // The decode kernel's lambda for these levels (see register_levels) lives as long as they do.
  ~Impl() {
    if (k_levels.ptr) unregister_levels(k_levels.as<float>());
    if (v_levels.ptr) unregister_levels(v_levels.as<float>());
  }
};

DeviceKvCache::DeviceKvCache(const CacheConfig& config) : impl_(std::make_unique<Impl>()) {
  validate(config);
  require_device("DeviceKvCache");
  if (!decode_pair_built(config.format))
    raise(Status::unsupported, fmt::format("DeviceKvCache: format pair {} has no CUDA kernels in this build "
                                           "(configure with -DTQKV_CUDA_ALL_PAIRS=ON)",
                                           kv_format_name(config.format)));
  if (!decode_head_dim_built(config.head_dim))
    raise(Status::unsupported, fmt::format("DeviceKvCache: head_dim = {} has no CUDA kernels (built: 64, 80, "
                                           "96, 128, 256, 512, 576)",
                                           config.head_dim));
  if (config.batch > 65535 || config.kv_heads > 65535)
    raise(Status::invalid_argument, fmt::format("DeviceKvCache: batch = {} and kv_heads = {} must be <= 65535 "
                                                "(CUDA grid)",
                                                config.batch, config.kv_heads));
  Impl& m = *impl_;
  m.config = config;
  check_cuda(cudaGetDevice(&m.device), "DeviceKvCache: cudaGetDevice");
  const int d = config.head_dim;
  m.k_row_bytes = row_bytes(config.format.key, d);
  m.v_row_bytes = row_bytes(config.format.value, d);
  const std::size_t rows = std::size_t(config.batch) * config.kv_heads * config.capacity;
  m.k_codes.allocate(rows * m.k_row_bytes, "key codes");
  m.v_codes.allocate(rows * m.v_row_bytes, "value codes");
  m.scales.allocate(rows * sizeof(ScalePair), "scales");
  m.tokens.allocate(std::size_t(config.batch) * sizeof(int64_t), "token counters");
  m.tokens_mirror.assign(config.batch, 0);
  m.status.allocate(append_status_bytes(), "append status");

  // The same rotations as KvCache (one per KV head, seeded per layer and head).
  std::vector<uint32_t> signs;
  for (int h = 0; h < config.kv_heads; ++h) {
    const Rotation rot(d, rotation_seed(config.seed, config.layer, h), config.sign_flips);
    signs.insert(signs.end(), rot.sign_bits().begin(), rot.sign_bits().end());
  }
  m.sign_bits.allocate(signs.size() * sizeof(uint32_t), "sign bits");
  m.sign_bits.upload(signs.data(), m.sign_bits.bytes, "sign bits");
  auto upload_codebook = [&](Format f, DeviceBuffer& levels, DeviceBuffer& bounds, DeviceBuffer& buckets,
                             CodeGrid& grid, const char* name) {
    const Codebook* cb = codebook_for(f, config);
    if (!cb) return;
    levels.allocate(cb->levels_f32.size() * sizeof(float), name);
    levels.upload(cb->levels_f32.data(), levels.bytes, name);
    bounds.allocate(cb->boundaries_f32.size() * sizeof(float), name);
    bounds.upload(cb->boundaries_f32.data(), bounds.bytes, name);
    register_levels(levels.as<float>(), cb->levels_f32.data(), static_cast<int>(cb->levels_f32.size()));
    if (cb->boundaries_f32.size() > static_cast<std::size_t>(kMaxGridBoundaries)) return;
    const std::vector<CodeBucket> table = make_code_grid(cb->boundaries_f32, grid);
    buckets.allocate(table.size() * sizeof(CodeBucket), name);
    buckets.upload(table.data(), buckets.bytes, name);
    grid.buckets = buckets.as<CodeBucket>();
  };
  upload_codebook(config.format.key, m.k_levels, m.k_boundaries, m.k_buckets, m.k_grid, "key codebook");
  upload_codebook(config.format.value, m.v_levels, m.v_boundaries, m.v_buckets, m.v_grid, "value codebook");
}

DeviceKvCache::~DeviceKvCache() = default;
DeviceKvCache::DeviceKvCache(DeviceKvCache&&) noexcept = default;
DeviceKvCache& DeviceKvCache::operator=(DeviceKvCache&&) noexcept = default;

const CacheConfig& DeviceKvCache::config() const { return impl_->config; }
int DeviceKvCache::device() const { return impl_->device; }

CacheView DeviceKvCache::view() const {
  const Impl& m = *impl_;
  CacheView v = view_shape(m.config);
  v.k_codes = m.k_codes.as<uint8_t>();
  v.v_codes = m.v_codes.as<uint8_t>();
  v.scales = m.scales.as<ScalePair>();
  v.tokens = m.tokens.as<int64_t>();
  v.sign_bits = m.sign_bits.as<uint32_t>();
  v.k_levels = m.k_levels.as<float>();
  v.v_levels = m.v_levels.as<float>();
  return v;
}

std::size_t DeviceKvCache::storage_bytes() const {
  const Impl& m = *impl_;
  return m.k_codes.bytes + m.v_codes.bytes + m.scales.bytes;
}

void DeviceKvCache::upload(const KvCache& host) {
  Impl& m = *impl_;
  if (!same_layout(host.config(), m.config))
    raise(Status::invalid_argument,
          "DeviceKvCache::upload: the host cache's config differs (shape, formats, ring, seed, layer, "
          "signs, scale rule or codebook)");
  const CacheView h = host.view();
  m.k_codes.upload(h.k_codes, m.k_codes.bytes, "key codes");
  m.v_codes.upload(h.v_codes, m.v_codes.bytes, "value codes");
  m.scales.upload(h.scales, m.scales.bytes, "scales");
  m.tokens.upload(h.tokens, m.tokens.bytes, "token counters");
  m.tokens_mirror.assign(h.tokens, h.tokens + m.config.batch);
}

HostCacheBytes DeviceKvCache::download() const {
  const Impl& m = *impl_;
  HostCacheBytes out;
  out.k_codes = m.k_codes.download<uint8_t>("key codes");
  out.v_codes = m.v_codes.download<uint8_t>("value codes");
  out.scales = m.scales.download<ScalePair>("scales");
  out.tokens = m.tokens.download<int64_t>("token counters");
  return out;
}

namespace {

// `view`: the cache's DeviceKvCache::view(), the storage the kernel writes.
void launch_append_checked(DeviceKvCache::Impl& m, const CacheView& view, int seq_begin, int n_seqs, const void* k,
                           const void* v, int n_tokens, InputType type, void* stream, const char* what) {
  const CacheConfig& c = m.config;
  require_device_pointer(k, what, "k");
  require_device_pointer(v, what, "v");
  const InputKind kind = input_kind(type);
  const std::size_t elem = kind == InputKind::f32 ? 4 : 2;
  if (!is_aligned(k, elem) || !is_aligned(v, elem))
    raise(Status::invalid_argument, fmt::format("{}: k and v must be aligned to their {}-byte elements", what, elem));
  if (!c.ring)
    for (int s = seq_begin; s < seq_begin + n_seqs; ++s)
      if (m.tokens_mirror[s] + n_tokens > c.capacity)
        raise(Status::out_of_range,
              fmt::format("{}: sequence {} holds {} tokens; {} more exceed capacity {} (not a ring buffer)",
                          what, s, m.tokens_mirror[s], n_tokens, c.capacity));
  AppendLaunch a;
  a.cache = view;
  a.k_boundaries = m.k_boundaries.as<float>();
  a.v_boundaries = m.v_boundaries.as<float>();
  a.k_grid = m.k_grid;
  a.v_grid = m.v_grid;
  a.least_squares = c.scale_rule == ScaleRule::least_squares;
  a.k = k;
  a.v = v;
  a.input = kind;
  a.seq_begin = seq_begin;
  a.n_seqs = n_seqs;
  a.n_tokens = n_tokens;
  a.status = m.status.ptr;
  check_cuda(launch_append(a, static_cast<cudaStream_t>(stream)), what);
  for (int s = seq_begin; s < seq_begin + n_seqs; ++s) m.tokens_mirror[s] += n_tokens;
}

}  // namespace

void DeviceKvCache::append(int seq, const void* k, const void* v, int n_tokens, InputType type, void* stream) {
  constexpr const char* what = "DeviceKvCache::append";
  if (seq < 0 || seq >= impl_->config.batch)
    raise(Status::out_of_range, fmt::format("{}: sequence index {} is outside [0, {})", what, seq, impl_->config.batch));
  if (n_tokens <= 0)
    raise(Status::invalid_argument, fmt::format("{}: n_tokens = {} must be positive (sequence {})", what, n_tokens, seq));
  launch_append_checked(*impl_, view(), seq, 1, k, v, n_tokens, type, stream, what);
}

void DeviceKvCache::append_step(const void* k, const void* v, InputType type, void* stream) {
  launch_append_checked(*impl_, view(), 0, impl_->config.batch, k, v, 1, type, stream, "DeviceKvCache::append_step");
}

void DeviceKvCache::reset(int seq, void* stream) {
  Impl& m = *impl_;
  if (seq < 0 || seq >= m.config.batch)
    raise(Status::out_of_range,
          fmt::format("DeviceKvCache::reset: sequence index {} is outside [0, {})", seq, m.config.batch));
  check_cuda(cudaMemsetAsync(m.tokens.as<int64_t>() + seq, 0, sizeof(int64_t), static_cast<cudaStream_t>(stream)),
             "DeviceKvCache::reset");
  m.tokens_mirror[seq] = 0;
}

int64_t DeviceKvCache::tokens(int seq) const {
  if (seq < 0 || seq >= impl_->config.batch)
    raise(Status::out_of_range,
          fmt::format("DeviceKvCache::tokens: sequence index {} is outside [0, {})", seq, impl_->config.batch));
  return impl_->tokens_mirror[seq];
}

void DeviceKvCache::sync_tokens(void* stream) {
  Impl& m = *impl_;
  check_cuda(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "DeviceKvCache::sync_tokens");
  m.tokens_mirror = m.tokens.download<int64_t>("token counters");
}

void DeviceKvCache::check_appends(void* stream) {
  Impl& m = *impl_;
  check_cuda(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "DeviceKvCache::check_appends");
  const std::vector<uint8_t> record = m.status.download<uint8_t>("append status");
  const AppendFailure f = append_status_read(record.data());
  if (f.kind == AppendFailure::none) return;
  check_cuda(cudaMemset(m.status.ptr, 0, m.status.bytes), "DeviceKvCache::check_appends: clear");
  if (f.kind == AppendFailure::non_finite)
    raise(Status::non_finite,
          fmt::format("DeviceKvCache::append: {} of sequence {}, kv head {}, position {} has a non-finite "
                      "coordinate; that row was not written",
                      f.is_value ? "value" : "key", f.seq, f.kv_head, f.position));
  m.tokens_mirror = m.tokens.download<int64_t>("token counters");
  raise(Status::out_of_range,
        fmt::format("DeviceKvCache::append: sequence {} would hold {} tokens, past capacity {} (not a ring "
                    "buffer); the excess tokens were dropped",
                    f.seq, f.position, m.config.capacity));
}

}  // namespace tqkv::cuda
