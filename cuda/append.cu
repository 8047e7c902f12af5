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
//
// Profile (H100, run r14: a 32k-token tq4 chunk, head_dim 128, 8 KV heads, f32 input, 201 us):
// issue-bound, 182 warp instructions per vector at 0.58 IPC with 16 warps per SM (128
// registers), shared wavefronts at 45 % of peak (the 8-byte code buckets cost 4.6 wavefronts a
// lookup for an ideal 2). Since then: a kernel per input type (no dead conversions), the buckets
// split into a float and a byte table, the byte giving the level's offset directly, the
// non-finite check read off the norm (the input is rechecked only when that is not finite), the
// block factor and sqrt(d) without double divisions, the length-16 stage without a branch, 80
// registers (24 warps per SM), and the inputs prefetched to L2 while the codebooks are staged.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "device_common.cuh"
#include "launch.hpp"

namespace tqkv::cuda_detail {
namespace {

inline constexpr int kLaneCoords = 32;   // coordinates per lane (one word of sign bits)
inline constexpr int kAppendWarps = 8;   // warps per block: 8 x 32 / G vectors of keys and values
inline constexpr int kAppendBlocksPerSm = 3;  // register bound: 24 warps per SM
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
template <InputKind kInput>
__device__ __forceinline__ void load_lane(const void* input, std::size_t at, int count, bool vector_loads,
                                          float (&x)[kLaneCoords]) {
  constexpr int kHalf = kLaneCoords / 2;
#pragma unroll
  for (int half = 0; half < kLaneCoords; half += kHalf) {
    if (half >= count) {
#pragma unroll
      for (int j = half; j < half + kHalf; ++j) x[j] = 0.0f;
      continue;
    }
    if constexpr (kInput == InputKind::f32) {
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
    } else {
      // f16 and bf16: 8 coordinates per 16 bytes.
      const uint16_t* p = static_cast<const uint16_t*>(input) + at;
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
        const float2 f = kInput == InputKind::f16
                             ? __half22float2(*reinterpret_cast<const __half2*>(&pairs[i]))
                             : __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&pairs[i]));
        x[half + 2 * i] = f.x;
        x[half + 2 * i + 1] = f.y;
      }
    }
  }
}

// Whether the lane's `count` coordinates at `input` + `at` are finite: element by element, for
// the rare vector whose rotation came out non-finite.
template <InputKind kInput>
__device__ __forceinline__ bool lane_input_finite(const void* input, std::size_t at, int count) {
  float probe = 0.0f;  // 0 * x is 0 for finite x and NaN otherwise
#pragma unroll 1
  for (int j = 0; j < count; ++j) {
    float x;
    if constexpr (kInput == InputKind::f32) {
      x = static_cast<const float*>(input)[at + j];
    } else {
      const uint16_t h = static_cast<const uint16_t*>(input)[at + j];
      x = kInput == InputKind::f16 ? __half2float(__ushort_as_half(h)) : __bfloat162float(__ushort_as_bfloat16(h));
    }
    probe = fmaf(x, 0.0f, probe);
  }
  return !isnan(probe);
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
__device__ __forceinline__ uint32_t lds_u8(uint32_t address) {
  uint32_t v;
  asm volatile("ld.shared.u8 %0, [%1];" : "=r"(v) : "r"(address));
  return v;
}

// A code grid's buckets split into their two fields: 64 floats span the 32 banks twice (at most
// two wavefronts for a warp's lookups, against 4.6 on average for the 8-byte CodeBucket array)
// and 64 bytes fit one wavefront. The base is kept as the byte offset of its level (8 base).
struct GridTable {
  float bound[kCodeBuckets];
  uint8_t base_level[kCodeBuckets];
};

// One format's codebook in shared memory (addresses) and its code grid (launch.hpp).
struct CodeTables {
  uint32_t bounds;   // 2^b - 1 floats (tq8's bisection)
  uint32_t levels;   // 2^b doubles
  uint32_t grid;     // GridTable (tq2, tq3, tq4)
  float scale, offset;
};

// 8 x the count of boundaries <= z (Codebook::quantize): the code's level byte offset, which
// addresses the level without a multiply; the packing shifts by 3 less.
template <int kBits>
__device__ __forceinline__ uint32_t level_offset_of(float z, const CodeTables& t, float middle) {
  if constexpr (kBits <= 4) {
    const uint32_t b = code_bucket(z, t.scale, t.offset);
    const float bound = lds_f32(t.grid + offsetof(GridTable, bound) + 4 * b);
    // set.ge gives all ones (-1) when bound <= z: one multiply-add adds 8.
    uint32_t above;
    asm("set.ge.u32.f32 %0, %1, %2;" : "=r"(above) : "f"(z), "f"(bound));
    return lds_u8(t.grid + offsetof(GridTable, base_level) + b) - 8u * above;
  } else {
    // Bisection over the 2^b - 1 sorted boundaries; `at` is the address of boundary `code`.
    constexpr int kCodes = 1 << kBits;
    uint32_t at = t.bounds + (middle <= z ? 4 * (kCodes / 2) : 0);
#pragma unroll
    for (int step = kCodes / 4; step > 0; step >>= 1) at += lds_f32(at + 4 * (step - 1)) <= z ? 4 * step : 0;
    return (at - t.bounds) * 2;
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
  // tq4 (the common format) keeps two running sums each, even and odd j (any order of the double
  // sums is allowed), halving the dependent DFMA chains; the other formats' paths keep one, as
  // two make ptxas spill at the 80-register bound.
  constexpr int kSums = kBits == 4 ? 2 : 1;
  double zc_part[2] = {0.0, 0.0}, cc_part[2] = {0.0, 0.0};
  const float middle = kBits > 4 ? lds_f32(t.bounds + 4 * ((1 << kBits) / 2 - 1)) : 0.0f;
#pragma unroll
  for (int w = 0; w < kBits; ++w) words[w] = 0;
  // count is 32, 16 or 0: two halves keep every index below compile-time.
#pragma unroll
  for (int half = 0; half < kLaneCoords; half += kLaneCoords / 2) {
    if (half >= count) break;
#pragma unroll
    for (int j = half; j < half + kLaneCoords / 2; ++j) {
      const float z = r[j] * to_unit;
      const uint32_t code8 = level_offset_of<kBits>(z, t, middle);  // 8 code
      const double c = lds_f64(t.levels + code8);
      zc_part[j % kSums] += static_cast<double>(z) * c;
      cc_part[j % kSums] += c * c;
      // The codes' bits are disjoint: adding them is or-ing them, in one shift-add.
      const int bit = kBits * j, at = bit % 32;
      words[bit / 32] += at >= 3 ? code8 << (at - 3) : code8 >> (3 - at);
      if (at + kBits > 32) words[bit / 32 + 1] += code8 >> (35 - at);
    }
  }
  zc = zc_part[0] + zc_part[1];
  cc = cc_part[0] + cc_part[1];
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

// The group's squared norm of the rotated x (every lane of the warp calls it: shuffles).
__device__ __forceinline__ double group_norm2(const float (&x)[kLaneCoords], int lanes) {
  // Four running sums (any order of the double sum is allowed) shorten the dependent chain.
  double part[4] = {0.0, 0.0, 0.0, 0.0};
#pragma unroll
  for (int j = 0; j < kLaneCoords; ++j) part[j % 4] += static_cast<double>(x[j]) * x[j];
  return group_sum((part[0] + part[1]) + (part[2] + part[3]), lanes);
}

// The lane's part of a rotated vector x (normalised blocks) of squared norm norm2: codes and
// scale; stores the lane's words of the row and, from the group's lane 0, the scale, unless
// !write. Every lane of the warp calls it (shuffles).
template <int kBits>
__device__ __forceinline__ void encode_lane(const float (&x)[kLaneCoords], double norm2, const LaneVector& v,
                                            bool write, bool least_squares, const CodeTables& tables, uint8_t* row,
                                            int row_bytes, float* scale) {
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

// float(1 / sqrt(double(block))) for a block of 2^k (the CPU's block factor), without double
// arithmetic: 2^(-k/2) for even k; for odd k float(1 / sqrt(2.0)) times 2^(-(k - 1)/2), the
// same float as scaling by a power of two is exact in double and in float.
__device__ __forceinline__ float block_factor_of(int log2_block) {
  const float inv_sqrt2 = 0.70710678f;  // float(1 / sqrt(2.0)) = 0x3f3504f3
  return __int_as_float((127 - (log2_block >> 1)) << 23) * ((log2_block & 1) ? inv_sqrt2 : 1.0f);
}

// Sends the lane's key and value inputs towards L2 while the block stages its codebooks, so
// that the loads after the barrier wait for L2 rather than DRAM (the values are read only after
// the keys are encoded). Its own index arithmetic (the empty asm keeps it from being shared
// with the kernel's): nothing stays live across the barrier for it.
template <InputKind kInput>
__device__ __forceinline__ void prefetch_lane_inputs(const AppendLaunch& a) {
  unsigned thread = threadIdx.x;
  asm("" : "+r"(thread));
  const int D = a.cache.head_dim;
  const int log2_lanes = __ffs(lanes_per_vector(D)) - 1;
  const int first = kLaneCoords * (thread & ((1 << log2_lanes) - 1));
  const int t = ((blockIdx.x * kAppendWarps + static_cast<int>(thread >> 5)) << (5 - log2_lanes)) +
                static_cast<int>((thread & 31) >> log2_lanes);
  if (t >= a.n_tokens || first >= D) return;
  const std::size_t at = ((static_cast<std::size_t>(blockIdx.z) * a.n_tokens + t) * a.cache.kv_heads + blockIdx.y) * D + first;
  constexpr int kElementBytes = kInput == InputKind::f32 ? 4 : 2;
  asm volatile("prefetch.global.L2 [%0];" ::"l"(static_cast<const char*>(a.k) + kElementBytes * at));
  asm volatile("prefetch.global.L2 [%0];" ::"l"(static_cast<const char*>(a.v) + kElementBytes * at));
}

template <InputKind kInput>
__global__ void __launch_bounds__(kAppendWarps * 32, kAppendBlocksPerSm) append_kernel(const AppendLaunch a, double sqrt_head_dim) {
  // Codebooks of the key [0] and value [1] formats: levels (double, as the least-squares sums take
  // them), the code grid (tq2 to tq4) or the boundaries (tq8).
  __shared__ double levels[2][kMaxCodes];
  __shared__ float bounds[2][kMaxCodes];
  __shared__ GridTable grids[2];
  const CacheView& cache = a.cache;
  prefetch_lane_inputs<kInput>(a);
  for (int which = 0; which < 2; ++which) {
    const Format f = which ? cache.format.value : cache.format.key;
    if (!quantized(f)) continue;
    const int n = 1 << bits_of(f);
    const float* l = which ? cache.v_levels : cache.k_levels;
    for (int i = threadIdx.x; i < n; i += blockDim.x) levels[which][i] = l[i];
    if (n - 1 <= kMaxGridBoundaries) {
      const CodeBucket* g = (which ? a.v_grid : a.k_grid).buckets;
      for (int i = threadIdx.x; i < kCodeBuckets; i += blockDim.x) {
        const CodeBucket bucket = g[i];
        grids[which].bound[i] = bucket.bound;
        grids[which].base_level[i] = static_cast<uint8_t>(8 * bucket.base);
      }
    } else {
      const float* b = which ? a.v_boundaries : a.k_boundaries;
      for (int i = threadIdx.x; i < n - 1; i += blockDim.x) bounds[which][i] = b[i];
    }
  }
  __syncthreads();  // the only block barrier: the rest is per warp

  const int D = cache.head_dim;
  LaneVector v;
  v.lanes = lanes_per_vector(D);
  const int log2_lanes = __ffs(v.lanes) - 1;
  const int lane = threadIdx.x & 31;
  v.group_lane = lane & (v.lanes - 1);
  const int group = lane >> log2_lanes;
  const int t = ((blockIdx.x * kAppendWarps + static_cast<int>(threadIdx.x >> 5)) << (5 - log2_lanes)) + group;
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
  const int log2_block = 31 - __clz(D ^ first);
  v.block = v.count > 0 ? 1 << log2_block : 0;
  v.block_factor = v.count > 0 ? block_factor_of(log2_block) : 0.0f;
  v.signs = v.count > 0 ? cache.sign_bits[static_cast<std::size_t>(kv_head) * cache.sign_words + v.group_lane] : 0u;
  v.sqrt_d = sqrt_head_dim;
  const int slot = active ? position_slot(position, cache.capacity, cache.ring) : 0;
  const std::size_t row = row_index(cache, seq, kv_head, slot);
  const std::size_t in_at = ((static_cast<std::size_t>(blockIdx.z) * a.n_tokens + t) * cache.kv_heads + kv_head) * D + first;
  // Bits of this lane's group in a warp ballot.
  const unsigned group_bits = (v.lanes == 32 ? kFullMask : (1u << v.lanes) - 1u) << (group * v.lanes);
  // Length 16 joins the lane's two halves unless its block is 16 (then the upper half is past
  // head_dim): upper = fma(lower, 1, -upper) rounds lower - upper once; with 0 it keeps the zeros.
  const float join_halves = v.block > kLaneCoords / 2 ? 1.0f : 0.0f;

#pragma unroll 1
  for (int which = 0; which < 2; ++which) {
    const bool is_value = which == 1;
    const Format f = is_value ? cache.format.value : cache.format.key;
    const void* input = is_value ? a.v : a.k;
    const int row_bytes = static_cast<int>(is_value ? cache.v_row_bytes : cache.k_row_bytes);
    uint8_t* out_row = writable(is_value ? cache.v_codes : cache.k_codes) + row * row_bytes;
    float* out_scale = writable(is_value ? cache.v_scales : cache.k_scales) + row;

    const int count = active ? v.count : 0;
    float x[kLaneCoords];
    load_lane<kInput>(input, in_at, count, (reinterpret_cast<uintptr_t>(input) & 15) == 0, x);
    // A non-finite input leaves its row as it was and is recorded.
    auto group_finite = [&](bool lane_finite) {
      const bool bad = (__ballot_sync(kFullMask, !lane_finite) & group_bits) != 0;
      if (active && bad && v.group_lane == 0) record_failure(a.status, kAppendNonFinite, seq, position, kv_head, which);
      return !bad;
    };

    if (!quantized(f)) {
      float probe = 0.0f;
#pragma unroll
      for (int j = 0; j < kLaneCoords; ++j) probe = fmaf(x[j], 0.0f, probe);
      const bool write = group_finite(!isnan(probe)) && active;
      if (write) store_half_row(x, out_row + 2 * first, 2 * first, row_bytes);
      if (write && v.group_lane == 0) *out_scale = 1.0f;
      continue;
    }

    // r = H S x: signs, then the butterflies of length 1, 2, 4, ... (fwht_unnormalized()). The
    // empty asm keeps the 32 shifted sign masks from being hoisted out of the loop (32 registers).
    uint32_t signs = v.signs;
    asm("" : "+r"(signs));
#pragma unroll
    for (int j = 0; j < kLaneCoords; ++j)
      x[j] = __int_as_float(__float_as_int(x[j]) ^ static_cast<int>((signs << (31 - j)) & 0x80000000u));
    // Lengths 1 to 8 stay inside every block (blocks are 16 or more); lanes past head_dim hold
    // zeros and keep them.
#pragma unroll
    for (int h = 1; h < kLaneCoords; h <<= 1) {
#pragma unroll
      for (int j = 0; j < kLaneCoords; ++j) {
        if (j & h) continue;
        const float lo = x[j], hi = x[j + h];
        x[j] = lo + hi;
        x[j + h] = h == kLaneCoords / 2 ? fmaf(lo, join_halves, -hi) : lo - hi;
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

    // Every output of a butterfly depends on both inputs, so a non-finite input makes its
    // whole block, and the norm, non-finite. A finite input may also overflow the rotation:
    // only then (rare) are the inputs themselves checked.
    const double norm2 = group_norm2(x, v.lanes);
    const bool suspect = !isfinite(norm2);
    const bool write = (!__any_sync(kFullMask, suspect) ||
                        group_finite(!suspect || lane_input_finite<kInput>(input, in_at, count))) &&
                       active;

    const CodeGrid& grid = is_value ? a.v_grid : a.k_grid;
    const CodeTables tables{static_cast<uint32_t>(__cvta_generic_to_shared(bounds[which])),
                            static_cast<uint32_t>(__cvta_generic_to_shared(levels[which])),
                            static_cast<uint32_t>(__cvta_generic_to_shared(&grids[which])), grid.scale, grid.offset};
    switch (f) {
      case Format::tq2: encode_lane<2>(x, norm2, v, write, a.least_squares, tables, out_row, row_bytes, out_scale); break;
      case Format::tq3: encode_lane<3>(x, norm2, v, write, a.least_squares, tables, out_row, row_bytes, out_scale); break;
      case Format::tq4: encode_lane<4>(x, norm2, v, write, a.least_squares, tables, out_row, row_bytes, out_scale); break;
      default: encode_lane<8>(x, norm2, v, write, a.least_squares, tables, out_row, row_bytes, out_scale); break;
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
  const double sqrt_d = std::sqrt(static_cast<double>(a.cache.head_dim));
  switch (a.input) {
    case InputKind::f32: append_kernel<InputKind::f32><<<grid, kAppendWarps * 32, 0, stream>>>(a, sqrt_d); break;
    case InputKind::f16: append_kernel<InputKind::f16><<<grid, kAppendWarps * 32, 0, stream>>>(a, sqrt_d); break;
    default: append_kernel<InputKind::bf16><<<grid, kAppendWarps * 32, 0, stream>>>(a, sqrt_d); break;
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  commit_tokens_kernel<<<1, 128, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace tqkv::cuda_detail
