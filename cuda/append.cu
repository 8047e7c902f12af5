// Quantize-on-append: one warp encodes the keys, then the values, of 32 / G consecutive tokens of
// one KV head, a group of G lanes per vector, each lane holding 32 consecutive coordinates in
// registers; then a one-thread kernel advances the device token counters.
//
// Same bytes as encode_vector() on the CPU (quantize.hpp): the rotation runs the same butterflies
// in the same order in float (stages of growing length; those inside a lane's 32 coordinates in
// registers, the longer ones between lanes through shuffles), the block factor is the float of
// 1.0 / sqrt(double(block)), the norm and the least-squares sums accumulate in double, z = r *
// float(sqrt(d) / norm) is one float multiply and the code is the count of float boundaries <= z.
// What can differ is the order of the double sums (lane by lane, then a shuffle tree; a loop on
// the CPU): that moves the norm in its last double bits, and only a z within an ulp or so of a
// boundary can land on the other side (tests count these and bound them).
//
// Layout: a vector spans P = bit_ceil(head_dim) coordinates, G = P / 32 lanes; lane l of the group
// holds coordinates [32 l, 32 l + 32) (fewer or none past head_dim). Hadamard blocks are powers of
// two of at least 16 and aligned to their size, so a lane lies inside one block or holds 16
// coordinates of a block of 16 and 16 past head_dim: a lane's butterflies of length h run while h
// is below its block's size, and a partner lane is then in the same block.
//
// Codes: tq2 to tq4 look z up in a code grid (launch.hpp: one bucket, one comparison); tq8
// bisects its 255 boundaries.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "device_common.cuh"
#include "launch.hpp"

namespace tqkv::cuda_detail {
namespace {

inline constexpr int kLaneCoords = 32;   // coordinates per lane (one word of sign bits)
inline constexpr int kAppendWarps = 8;   // warps per block: 8 x 32 / G vectors of keys and values
inline constexpr int kMaxCodes = 256;    // tq8
inline constexpr unsigned kFullMask = 0xffffffffu;

// Lanes per vector: bit_ceil(head_dim) / 32 (head_dim >= 32). Host and device.
__host__ __device__ constexpr int lanes_per_vector(int head_dim) {
  int span = kLaneCoords;
  while (span < head_dim) span *= 2;
  return span / kLaneCoords;
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

// The view's storage, written by append. CacheView's pointers are const because decode reads
// through the view; the memory itself is the cache's own writable allocation (DeviceKvCache).
template <typename T>
__device__ __forceinline__ T* writable(const T* p) {
  return const_cast<T*>(p);
}

// Coordinates [0, count) of a lane's 32 (count 0, 16 or 32) from `input` (element offset `at`);
// the others are 0. `vector_loads`: the input is 16-byte aligned (rows then are too, as head_dim
// is a multiple of 16), so 16-byte loads; else element by element.
__device__ __forceinline__ void load_lane(const void* input, std::size_t at, int count, InputKind kind,
                                          bool vector_loads, float (&x)[kLaneCoords]) {
  constexpr int kHalf = kLaneCoords / 2;
#pragma unroll
  for (int half = 0; half < kLaneCoords; half += kHalf) {
    if (half >= count) {
#pragma unroll
      for (int j = half; j < half + kHalf; ++j) x[j] = 0.0f;
      continue;
    }
    if (kind == InputKind::f32) {
      const float* p = static_cast<const float*>(input) + at;
      if (vector_loads) {
#pragma unroll
        for (int j = half; j < half + kHalf; j += 4) {
          const float4 w = __ldg(reinterpret_cast<const float4*>(p + j));
          x[j] = w.x;
          x[j + 1] = w.y;
          x[j + 2] = w.z;
          x[j + 3] = w.w;
        }
      } else {
#pragma unroll
        for (int j = half; j < half + kHalf; ++j) x[j] = p[j];
      }
      continue;
    }
    // f16 and bf16: 8 coordinates per 16 bytes.
    const uint16_t* p = static_cast<const uint16_t*>(input) + at;
    const bool is_half = kind == InputKind::f16;
    uint32_t pairs[kHalf / 2];
    if (vector_loads) {
#pragma unroll
      for (int i = 0; i < kHalf / 8; ++i) {
        const uint4 w = __ldg(reinterpret_cast<const uint4*>(p + half) + i);
        pairs[4 * i] = w.x;
        pairs[4 * i + 1] = w.y;
        pairs[4 * i + 2] = w.z;
        pairs[4 * i + 3] = w.w;
      }
    } else {
#pragma unroll
      for (int i = 0; i < kHalf / 2; ++i) pairs[i] = p[half + 2 * i] | (uint32_t{p[half + 2 * i + 1]} << 16);
    }
#pragma unroll
    for (int i = 0; i < kHalf / 2; ++i) {
      const float2 f = is_half ? __half22float2(*reinterpret_cast<const __half2*>(&pairs[i]))
                               : __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&pairs[i]));
      x[half + 2 * i] = f.x;
      x[half + 2 * i + 1] = f.y;
    }
  }
}

// The lane's 32 coordinates as binary16 (f16 rows hold the unrotated vector), 16 bytes at a time;
// only pieces inside the row (row_bytes = 2 * head_dim) are stored.
__device__ __forceinline__ void store_half_row(const float (&x)[kLaneCoords], uint8_t* lane_row, int lane_offset,
                                               int row_bytes) {
#pragma unroll
  for (int c = 0; c < kLaneCoords / 8; ++c) {
    if (lane_offset + 16 * c >= row_bytes) break;
    uint32_t words[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const __half2 h = __floats2half2_rn(x[8 * c + 2 * i], x[8 * c + 2 * i + 1]);
      words[i] = *reinterpret_cast<const uint32_t*>(&h);
    }
    reinterpret_cast<uint4*>(lane_row)[c] = make_uint4(words[0], words[1], words[2], words[3]);
  }
}

// Sum over the G lanes of a vector's group (a shuffle tree; every lane of the group gets the
// same bits, as each step adds the same two values).
template <typename T>
__device__ __forceinline__ T group_sum(T v, int lanes) {
  for (int m = 1; m < lanes; m <<= 1) v += __shfl_xor_sync(kFullMask, v, m);
  return v;
}

// Shared-memory loads at a 32-bit shared address (a generic pointer would cost 64-bit
// arithmetic in the searches below).
__device__ __forceinline__ float lds_f32(uint32_t address) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(address));
  return v;
}
__device__ __forceinline__ double lds_f64(uint32_t address) {
  double v;
  asm volatile("ld.shared.f64 %0, [%1];" : "=d"(v) : "r"(address));
  return v;
}
__device__ __forceinline__ uint2 lds_u32x2(uint32_t address) {
  uint2 v;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "r"(address));
  return v;
}

// One format's codebook in shared memory (addresses) and its code grid (launch.hpp).
struct CodeTables {
  uint32_t bounds;   // 2^b - 1 floats (tq8's bisection)
  uint32_t levels;   // 2^b doubles
  uint32_t buckets;  // kCodeBuckets CodeBucket (tq2, tq3, tq4)
  float scale, offset;
};

// Count of boundaries <= z (Codebook::quantize).
template <int kBits>
__device__ __forceinline__ uint32_t code_of(float z, const CodeTables& t, float middle) {
  if constexpr (kBits <= 4) {
    const uint2 bucket = lds_u32x2(t.buckets + sizeof(CodeBucket) * code_bucket(z, t.scale, t.offset));
    return bucket.y + (__uint_as_float(bucket.x) <= z ? 1u : 0u);
  } else {
    // Bisection over the 2^b - 1 sorted boundaries; `at` is the address of boundary `code`.
    constexpr int kCodes = 1 << kBits;
    uint32_t at = t.bounds + (middle <= z ? 4 * (kCodes / 2) : 0);
#pragma unroll
    for (int step = kCodes / 4; step > 0; step >>= 1) at += lds_f32(at + 4 * (step - 1)) <= z ? 4 * step : 0;
    return (at - t.bounds) / 4;
  }
}

// Codes of the lane's coordinates r[j] * to_unit, packed as the row's little-endian bit stream
// (format.hpp: code i at bits [b i, b i + b)), into kBits words: the lane's 32 codes are exactly
// kBits 32-bit words. Coordinates past head_dim (j >= count) get code 0 and add nothing to the
// least-squares sums zc = sum z c and cc = sum c^2.
template <int kBits>
__device__ __forceinline__ void quantize_lane(const float (&r)[kLaneCoords], float to_unit, int count,
                                              const CodeTables& t, uint32_t (&words)[kBits], double& zc,
                                              double& cc) {
  const float middle = kBits > 4 ? lds_f32(t.bounds + 4 * ((1 << kBits) / 2 - 1)) : 0.0f;
#pragma unroll
  for (int w = 0; w < kBits; ++w) words[w] = 0;
  zc = 0.0;
  cc = 0.0;
  // count is 32, 16 or 0: two halves keep every index below compile-time.
#pragma unroll
  for (int half = 0; half < kLaneCoords; half += kLaneCoords / 2) {
    if (half >= count) break;
#pragma unroll
    for (int j = half; j < half + kLaneCoords / 2; ++j) {
      const float z = r[j] * to_unit;
      const uint32_t code = code_of<kBits>(z, t, middle);
      const double c = lds_f64(t.levels + 8 * code);
      zc += static_cast<double>(z) * c;
      cc += c * c;
      // The codes' bits are disjoint: adding them is or-ing them, in one shift-add.
      const int bit = kBits * j;
      words[bit / 32] += code << (bit % 32);
      if (bit % 32 + kBits > 32) words[bit / 32 + 1] += code >> (32 - bit % 32);
    }
  }
}

// Stores a lane's kBits words at byte lane_offset of the row, in the widest pieces their
// alignment allows (lane_offset = 4 kBits l); pieces at or past row_bytes are not stored.
template <int kBits>
__device__ __forceinline__ void store_lane_words(const uint32_t (&words)[kBits], uint8_t* row, int lane_offset,
                                                 int row_bytes) {
  if constexpr (kBits == 3) {
#pragma unroll
    for (int i = 0; i < 3; ++i)
      if (lane_offset + 4 * i < row_bytes) reinterpret_cast<uint32_t*>(row + lane_offset)[i] = words[i];
  } else if constexpr (kBits == 2) {
    if (lane_offset < row_bytes) *reinterpret_cast<uint2*>(row + lane_offset) = make_uint2(words[0], words[1]);
  } else {
    static_assert(kBits % 4 == 0, "store_lane_words: 2, 3, 4 or 8 bits");
#pragma unroll
    for (int i = 0; i < kBits / 4; ++i)
      if (lane_offset + 16 * i < row_bytes)
        reinterpret_cast<uint4*>(row + lane_offset)[i] =
            make_uint4(words[4 * i], words[4 * i + 1], words[4 * i + 2], words[4 * i + 3]);
  }
}

// What one lane needs to encode its part of a vector.
struct LaneVector {
  int lanes;           // G: lanes of the group
  int group_lane;      // l in [0, G)
  int count;           // coordinates of the lane inside head_dim: 32, 16 or 0
  int block;           // size of the Hadamard block holding them (0 when count is 0)
  float block_factor;  // float(1 / sqrt(block)), as the CPU's block_hadamard()
  uint32_t signs;      // the lane's 32 sign bits (bit j: coordinate 32 l + j is negated)
  double sqrt_d;
};

// The lane's part of a rotated vector x (normalised blocks): norm, codes and scale; stores the
// lane's words of the row and, from the group's lane 0, the scale, unless !write. Every lane of
// the warp calls it (shuffles).
template <int kBits>
__device__ __forceinline__ void encode_lane(float (&x)[kLaneCoords], const LaneVector& v, bool write,
                                            bool least_squares, const CodeTables& tables, uint8_t* row,
                                            int row_bytes, float* scale) {
  // Four running sums (any order of the double sum is allowed) shorten the dependent chain.
  double part[4] = {0.0, 0.0, 0.0, 0.0};
#pragma unroll
  for (int j = 0; j < kLaneCoords; ++j) part[j % 4] += static_cast<double>(x[j]) * x[j];
  const double norm2 = group_sum((part[0] + part[1]) + (part[2] + part[3]), v.lanes);
  const double norm = sqrt(norm2);
  const bool zero = norm == 0.0;  // zero vector: codes 0 and scale 0 decode to exactly 0
  const float to_unit = static_cast<float>(v.sqrt_d / norm);  // (inf for a zero vector: codes unused)
  uint32_t words[kBits];
  double zc, cc;
  quantize_lane<kBits>(x, to_unit, v.count, tables, words, zc, cc);
  zc = group_sum(zc, v.lanes);
  cc = group_sum(cc, v.lanes);
  if (!write) return;
#pragma unroll
  for (int w = 0; w < kBits; ++w) words[w] = zero ? 0u : words[w];
  store_lane_words<kBits>(words, row, 4 * kBits * v.group_lane, row_bytes);
  // Padding the group's lanes do not cover (a row of 16 bytes and fewer lane words: head_dim 32).
  for (int at = 4 * kBits * v.lanes + 4 * v.group_lane; at < row_bytes; at += 4 * v.lanes)
    *reinterpret_cast<uint32_t*>(row + at) = 0u;
  if (v.group_lane == 0) {
    const double s = least_squares && cc > 0 ? norm * zc / cc : norm;
    *scale = zero ? 0.0f : static_cast<float>(s / v.sqrt_d);
  }
}

__global__ void __launch_bounds__(kAppendWarps * 32) append_kernel(const AppendLaunch a) {
  // Codebooks of the key [0] and value [1] formats: levels (double, as the least-squares sums take
  // them), the code grid's buckets (tq2 to tq4) or the boundaries (tq8).
  __shared__ double levels[2][kMaxCodes];
  __shared__ float bounds[2][kMaxCodes];
  __shared__ CodeBucket buckets[2][kCodeBuckets];
  const CacheView& cache = a.cache;
  for (int which = 0; which < 2; ++which) {
    const Format f = which ? cache.format.value : cache.format.key;
    if (!quantized(f)) continue;
    const int n = 1 << bits_of(f);
    const float* l = which ? cache.v_levels : cache.k_levels;
    for (int i = threadIdx.x; i < n; i += blockDim.x) levels[which][i] = l[i];
    if (n - 1 <= kMaxGridBoundaries) {
      const CodeBucket* g = (which ? a.v_grid : a.k_grid).buckets;
      for (int i = threadIdx.x; i < kCodeBuckets; i += blockDim.x) buckets[which][i] = g[i];
    } else {
      const float* b = which ? a.v_boundaries : a.k_boundaries;
      for (int i = threadIdx.x; i < n - 1; i += blockDim.x) bounds[which][i] = b[i];
    }
  }
  __syncthreads();  // the only block barrier: the rest is per warp

  const int D = cache.head_dim;
  LaneVector v;
  v.lanes = lanes_per_vector(D);
  const int lane = threadIdx.x & 31;
  v.group_lane = lane & (v.lanes - 1);
  const int group = lane / v.lanes;
  const int t = (blockIdx.x * kAppendWarps + static_cast<int>(threadIdx.x >> 5)) * (32 / v.lanes) + group;
  const int kv_head = blockIdx.y;
  const int seq = a.seq_begin + blockIdx.z;
  const int64_t position = cache.tokens[seq] + t;
  // Ring: only the newest `capacity` tokens of a chunk survive. Contiguous: the host refused an
  // overflow on direct calls; a graph replay past capacity drops the tokens (commit_tokens flags it).
  const bool active = t < a.n_tokens && (cache.ring ? !(a.n_tokens > cache.capacity && t < a.n_tokens - cache.capacity)
                                                    : position < cache.capacity);
  if (__all_sync(kFullMask, !active)) return;  // whole warps only: the rest shuffles

  const int first = kLaneCoords * v.group_lane;
  v.count = min(max(D - first, 0), kLaneCoords);
  // The blocks are D's set bits, largest first: the one holding `first` is bit_floor(D ^ first).
  v.block = v.count > 0 ? 1 << (31 - __clz(D ^ first)) : 0;
  v.block_factor = v.count > 0 ? static_cast<float>(1.0 / sqrt(static_cast<double>(v.block))) : 0.0f;
  v.signs = v.count > 0 ? cache.sign_bits[static_cast<std::size_t>(kv_head) * cache.sign_words + v.group_lane] : 0u;
  v.sqrt_d = sqrt(static_cast<double>(D));
  const int slot = active ? position_slot(position, cache.capacity, cache.ring) : 0;
  const std::size_t row = row_index(cache, seq, kv_head, slot);
  const std::size_t in_at = ((static_cast<std::size_t>(blockIdx.z) * a.n_tokens + t) * cache.kv_heads + kv_head) * D + first;
  // Bits of this lane's group in a warp ballot.
  const unsigned group_bits = (v.lanes == 32 ? kFullMask : (1u << v.lanes) - 1u) << (group * v.lanes);

#pragma unroll 1
  for (int which = 0; which < 2; ++which) {
    const bool is_value = which == 1;
    const Format f = is_value ? cache.format.value : cache.format.key;
    const void* input = is_value ? a.v : a.k;
    const int row_bytes = static_cast<int>(is_value ? cache.v_row_bytes : cache.k_row_bytes);
    uint8_t* out_row = writable(is_value ? cache.v_codes : cache.k_codes) + row * row_bytes;
    float* out_scale = writable(is_value ? cache.v_scales : cache.k_scales) + row;

    float x[kLaneCoords];
    load_lane(input, in_at, active ? v.count : 0, a.input, (reinterpret_cast<uintptr_t>(input) & 15) == 0, x);
    // 0 * x is 0 for finite x and NaN otherwise: one multiply-add per coordinate finds any.
    float probe = 0.0f;
#pragma unroll
    for (int j = 0; j < kLaneCoords; ++j) probe = fmaf(x[j], 0.0f, probe);
    const bool group_bad = (__ballot_sync(kFullMask, isnan(probe)) & group_bits) != 0;
    if (active && group_bad && v.group_lane == 0) record_failure(a.status, kAppendNonFinite, seq, position, kv_head, which);
    const bool write = active && !group_bad;  // a non-finite input leaves its row as it was

    if (!quantized(f)) {
      if (write) store_half_row(x, out_row + 2 * first, 2 * first, row_bytes);
      if (write && v.group_lane == 0) *out_scale = 1.0f;
      continue;
    }

    // r = H S x: signs, then the butterflies of length 1, 2, 4, ... (fwht_unnormalized()).
#pragma unroll
    for (int j = 0; j < kLaneCoords; ++j)
      x[j] = __int_as_float(__float_as_int(x[j]) ^ static_cast<int>((v.signs << (31 - j)) & 0x80000000u));
    // Lengths 1 to 8 stay inside every block (blocks are 16 or more); lanes past head_dim hold
    // zeros and keep them. Length 16 joins the lane's two halves unless its block is 16.
#pragma unroll
    for (int h = 1; h < kLaneCoords; h <<= 1) {
      if (h == kLaneCoords / 2 && v.block <= h) break;
#pragma unroll
      for (int j = 0; j < kLaneCoords; ++j) {
        if (j & h) continue;
        const float lo = x[j], hi = x[j + h];
        x[j] = lo + hi;
        x[j + h] = lo - hi;
      }
    }
    for (int m = 1; m < v.lanes; m <<= 1) {
      // Partner lane l ^ m holds the other operands. The lower lane keeps a + b, the upper a - b:
      // fma(+-1, own, partner) rounds the exact own +- partner once, as the CPU's add or subtract.
      const bool on = m * kLaneCoords < v.block;
      const float own_sign = (v.group_lane & m) ? -1.0f : 1.0f;
#pragma unroll
      for (int j = 0; j < kLaneCoords; ++j) {
        const float partner = __shfl_xor_sync(kFullMask, x[j], m);
        if (on) x[j] = fmaf(own_sign, x[j], partner);
      }
    }
#pragma unroll
    for (int j = 0; j < kLaneCoords; ++j) x[j] *= v.block_factor;

    const CodeGrid& grid = is_value ? a.v_grid : a.k_grid;
    const CodeTables tables{static_cast<uint32_t>(__cvta_generic_to_shared(bounds[which])),
                            static_cast<uint32_t>(__cvta_generic_to_shared(levels[which])),
                            static_cast<uint32_t>(__cvta_generic_to_shared(buckets[which])), grid.scale, grid.offset};
    switch (f) {
      case Format::tq2: encode_lane<2>(x, v, write, a.least_squares, tables, out_row, row_bytes, out_scale); break;
      case Format::tq3: encode_lane<3>(x, v, write, a.least_squares, tables, out_row, row_bytes, out_scale); break;
      case Format::tq4: encode_lane<4>(x, v, write, a.least_squares, tables, out_row, row_bytes, out_scale); break;
      default: encode_lane<8>(x, v, write, a.least_squares, tables, out_row, row_bytes, out_scale); break;
    }
  }
}

// Advances the counters after the rows are written (stream order), so that a graph replay
// appends at the position left by the previous replay. A contiguous cache saturates at capacity
// and records the overflow rather than exposing positions it never stored.
__global__ void commit_tokens_kernel(const AppendLaunch a) {
  int64_t* tokens = writable(a.cache.tokens);
  for (int s = threadIdx.x; s < a.n_seqs; s += blockDim.x) {
    const int seq = a.seq_begin + s;
    const int64_t before = tokens[seq];
    int64_t after = before + a.n_tokens;
    if (!a.cache.ring && after > a.cache.capacity) {
      record_failure(a.status, kAppendOverflow, seq, after, -1, 0);
      after = a.cache.capacity;
    }
    tokens[seq] = after;
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
  const int tokens_per_block = kAppendWarps * 32 / lanes_per_vector(a.cache.head_dim);
  const dim3 grid((a.n_tokens + tokens_per_block - 1) / tokens_per_block, a.cache.kv_heads, a.n_seqs);
  append_kernel<<<grid, kAppendWarps * 32, 0, stream>>>(a);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  commit_tokens_kernel<<<1, 128, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace tqkv::cuda_detail
