// Quantize-on-append: one thread block per (token, KV head, sequence) encodes the key and the
// value of that token exactly as encode_vector() does on the CPU (quantize.hpp), then a one-thread
// kernel advances the device token counters.
//
// Same bytes as the CPU: the rotation runs the same butterflies in the same order in float, the
// block factor is the correctly rounded float of 1/sqrt(block), the norm and the least-squares
// sums accumulate in double, z = r * float(sqrt(d) / norm) is one float multiply and the code is
// the count of float boundaries <= z. What can differ is the order of the double sums (a tree
// here, a loop on the CPU); that moves the norm in its last double bits, and only a z within an
// ulp or so of a boundary can land on the other side (tests count these and bound them).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "device_common.cuh"
#include "launch.hpp"

namespace tqkv::cuda_detail {
namespace {

inline constexpr int kAppendThreads = 128;

// Shared memory: r[D] floats, codes[D] bytes, then one double per warp (16-byte aligned).
__host__ __device__ constexpr std::size_t append_scratch_offset(int head_dim) {
  return (static_cast<std::size_t>(head_dim) * (sizeof(float) + 1) + 15) / 16 * 16;
}

// First failure of any append since the last check_appends(); kind 0 = none.
struct AppendStatus {
  int kind;  // kAppendNonFinite or kAppendOverflow
  int seq;
  long long position;
  int kv_head;
  int is_value;
};
inline constexpr int kAppendNonFinite = 1;
inline constexpr int kAppendOverflow = 2;

__device__ void record_failure(void* status, int kind, int seq, long long position, int kv_head,
                               int is_value) {
  auto* s = static_cast<AppendStatus*>(status);
  if (atomicCAS(&s->kind, 0, -1) == 0) {  // -1: claimed, details being written
    s->seq = seq;
    s->position = position;
    s->kv_head = kv_head;
    s->is_value = is_value;
    __threadfence();
    atomicExch(&s->kind, kind);
  }
}

__device__ __forceinline__ float load_input(const void* p, std::size_t i, InputKind kind) {
  switch (kind) {
    case InputKind::f16: return __half2float(static_cast<const __half*>(p)[i]);
    case InputKind::bf16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

// Block-wide sum of per-thread doubles (kAppendThreads threads). `scratch` holds one double per warp.
__device__ double block_sum(double v, double* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // scratch may still be read by a previous call
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  double total = 0.0;
#pragma unroll
  for (int w = 0; w < kAppendThreads / 32; ++w) total += scratch[w];
  return total;
}

// Number of boundaries <= z (Codebook::quantize: ties go up), by binary search.
__device__ __forceinline__ int quantize_index(float z, const float* boundaries, int n_boundaries) {
  int lo = 0, hi = n_boundaries;  // answer in [lo, hi]
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (boundaries[mid] <= z) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Packs codes[0..head_dim) into row (format.hpp layouts), zeroing the row's padding.
__device__ void pack_row(Format f, const uint8_t* codes, int head_dim, int row_bytes, uint8_t* row) {
  const int bits = bits_of(f);
  const int packed = head_dim * bits / 8;
  const int chunks = head_dim / kChunkCoords;  // 8 codes = `bits` bytes
  for (int ch = threadIdx.x; ch < chunks; ch += blockDim.x) {
    uint64_t word = 0;
    for (int i = 0; i < kChunkCoords; ++i) word |= uint64_t(codes[ch * kChunkCoords + i]) << (bits * i);
    for (int byte = 0; byte < bits; ++byte) row[ch * bits + byte] = static_cast<uint8_t>(word >> (8 * byte));
  }
  for (int i = packed + threadIdx.x; i < row_bytes; i += blockDim.x) row[i] = 0;
}

__global__ void __launch_bounds__(kAppendThreads) append_kernel(const AppendLaunch a) {
  extern __shared__ __align__(16) uint8_t smem[];
  const int D = a.head_dim;
  float* r = reinterpret_cast<float*>(smem);                              // [D] rotated vector
  uint8_t* codes = smem + D * sizeof(float);                              // [D]
  double* scratch = reinterpret_cast<double*>(smem + append_scratch_offset(D));  // [warps]

  const int t = blockIdx.x, kv_head = blockIdx.y, s = blockIdx.z;
  const int seq = a.seq_begin + s;
  const int64_t position = a.tokens[seq] + t;
  // Ring: only the newest `capacity` tokens of a chunk survive. Contiguous: the host refused an
  // overflow on direct calls; a graph replay past capacity drops the tokens (commit_tokens flags it).
  if (a.ring ? (a.n_tokens > a.capacity && t < a.n_tokens - a.capacity) : position >= a.capacity) return;
  const int slot = position_slot(position, a.capacity, a.ring);
  const std::size_t row = (static_cast<std::size_t>(seq) * a.kv_heads + kv_head) * a.capacity + slot;
  const std::size_t in0 = ((static_cast<std::size_t>(s) * a.n_tokens + t) * a.kv_heads + kv_head) * D;
  const uint32_t* signs = a.sign_bits + static_cast<std::size_t>(kv_head) * a.sign_words;

  for (int which = 0; which < 2; ++which) {
    const bool is_value = which == 1;
    const Format f = is_value ? a.format.value : a.format.key;
    const void* input = is_value ? a.v : a.k;
    uint8_t* out_row = is_value ? a.v_codes + row * a.v_row_bytes : a.k_codes + row * a.k_row_bytes;
    const int row_bytes = static_cast<int>(is_value ? a.v_row_bytes : a.k_row_bytes);
    float* out_scale = is_value ? a.v_scales + row : a.k_scales + row;

    __syncthreads();  // r and codes of the key pass are no longer read
    int non_finite = 0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
      const float x = load_input(input, in0 + i, a.input);
      non_finite |= !isfinite(x);
      r[i] = (f != Format::f16 && sign_negated(signs, i)) ? -x : x;
    }
    if (__syncthreads_or(non_finite)) {  // leave the row as it was; the host's check_appends() names the input
      if (threadIdx.x == 0) record_failure(a.status, kAppendNonFinite, seq, position, kv_head, which);
      continue;
    }
    if (f == Format::f16) {
      for (int i = threadIdx.x; i < row_bytes / 2; i += blockDim.x)
        reinterpret_cast<__half*>(out_row)[i] = i < D ? __float2half_rn(r[i]) : __half{};
      if (threadIdx.x == 0) *out_scale = 1.0f;
      continue;
    }

    block_fwht_unnormalized(r, 1, D, D);
    double norm2 = 0.0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
      int offset, size;
      hadamard_block_of(D, i, offset, size);
      const float v = r[i] * static_cast<float>(1.0 / sqrt(static_cast<double>(size)));
      r[i] = v;
      norm2 += static_cast<double>(v) * v;
    }
    const double norm = sqrt(block_sum(norm2, scratch));
    if (norm == 0.0) {  // zero vector: scale 0 decodes to exactly 0 whatever the codes
      for (int i = threadIdx.x; i < row_bytes; i += blockDim.x) out_row[i] = 0;
      if (threadIdx.x == 0) *out_scale = 0.0f;
      continue;
    }
    const double sqrt_d = sqrt(static_cast<double>(D));
    const float to_unit = static_cast<float>(sqrt_d / norm);
    const float* boundaries = is_value ? a.v_boundaries : a.k_boundaries;
    const float* levels = is_value ? a.v_levels : a.k_levels;
    const int n_boundaries = (1 << bits_of(f)) - 1;
    double zc = 0.0, cc = 0.0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
      const float z = r[i] * to_unit;
      const int idx = quantize_index(z, boundaries, n_boundaries);
      codes[i] = static_cast<uint8_t>(idx);
      const double c = levels[idx];
      zc += static_cast<double>(z) * c;
      cc += c * c;
    }
    zc = block_sum(zc, scratch);
    cc = block_sum(cc, scratch);  // its barriers also publish codes[] to the packing threads
    pack_row(f, codes, D, row_bytes, out_row);
    if (threadIdx.x == 0) {
      const double scale = a.least_squares && cc > 0 ? norm * zc / cc : norm;
      *out_scale = static_cast<float>(scale / sqrt_d);
    }
  }
}

// Advances the counters after the rows are written (stream order), so that a graph replay
// appends at the position left by the previous replay. A contiguous cache saturates at capacity
// and records the overflow rather than exposing positions it never stored.
__global__ void commit_tokens_kernel(const AppendLaunch a) {
  for (int s = threadIdx.x; s < a.n_seqs; s += blockDim.x) {
    const int seq = a.seq_begin + s;
    const int64_t before = a.tokens[seq];
    int64_t after = before + a.n_tokens;
    if (!a.ring && after > a.capacity) {
      record_failure(a.status, kAppendOverflow, seq, after, -1, 0);
      after = a.capacity;
    }
    a.tokens[seq] = after;
  }
}

}  // namespace

std::size_t append_status_bytes() noexcept { return sizeof(AppendStatus); }

AppendFailure append_status_read(const void* host_record) noexcept {
  const auto* s = static_cast<const AppendStatus*>(host_record);
  AppendFailure f;
  f.kind = s->kind == kAppendNonFinite  ? AppendFailure::non_finite
           : s->kind == kAppendOverflow ? AppendFailure::overflow
                                        : AppendFailure::none;
  f.seq = s->seq;
  f.position = s->position;
  f.kv_head = s->kv_head;
  f.is_value = s->is_value != 0;
  return f;
}

cudaError_t launch_append(const AppendLaunch& a, cudaStream_t stream) {
  const std::size_t smem = append_scratch_offset(a.head_dim) + (kAppendThreads / 32) * sizeof(double);
  append_kernel<<<dim3(a.n_tokens, a.kv_heads, a.n_seqs), kAppendThreads, smem, stream>>>(a);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  commit_tokens_kernel<<<1, 128, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace tqkv::cuda_detail
