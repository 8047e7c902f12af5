// Quantize-on-append: two encoders, then a one-thread kernel that advances the device token
// counters.
//   - The tensor-core encoder (head_dim 128, both formats quantized; f32 inputs only for the pairs
//     with their own kernels): the rotation as an mma over 16 coordinates and butterflies over 8.
//   - The butterfly encoder (every other case): one warp encodes the keys, then the values, of
//     32 / G consecutive tokens of one KV head, a group of G lanes per vector, each lane holding
//     32 consecutive coordinates in registers.
// Both end in the same per-lane quantization (encode_rotated).
//
// What matches the CPU's encode_vector() (quantize.hpp): the codes are the count of float
// boundaries <= z with z = r * float(sqrt(d) / ||r||) one float multiply, and the butterfly
// encoder runs the CPU's butterflies in the same order in float (stages of growing length; those
// inside a lane's 32 coordinates in registers, the longer ones between lanes through shuffles)
// with the same block factor float(1.0 / sqrt(double(block))). What may differ: the norm and the
// least-squares sums are float sums per lane (four chains of at most 8 terms) and a float tree
// over the group, the CPU's a double loop (~1e-7 relative; the CPU keeps double, as the
// reference); the tensor-core encoder's rotation adds in another order. So a z within ~1e-6 of a
// boundary can land on the other side, and a scale moves by ~1e-7 (tests bound both: kBoundaryTie*,
// kScaleRelative).
// 8-bit codes (format.hpp's codes_follow_stored_scale) are then chosen again, as the CPU's, from
// u = r * float(1 / stored scale) (on the tensor-core encoder's unnormalised coordinates also times
// float(1 / sqrt(128))): their ties are in u, and a stored scale one bfloat16 unit from the CPU's
// (a scale tie) gives codes against that scale, up to ~20 % of the vector's differing by one.
//
// Layout: a vector spans P = bit_ceil(head_dim) coordinates, G = P / 32 lanes; lane l of the group
// holds coordinates [32 l, 32 l + 32) (fewer or none past head_dim). Hadamard blocks are powers of
// two of at least 16 and aligned to their size, so a lane lies inside one block or holds 16
// coordinates of a block of 16 and 16 past head_dim: a lane's butterflies of length h run while h
// is below its block's size, and a partner lane is then in the same block.
//
// Codes: tq2 to tq4 look z up in a code grid (launch.hpp: one bucket, one shared load, one
// comparison); tq8 bisects its 255 boundaries.
//
// History (H100, a 32k-token tq4 chunk, head_dim 128, 8 KV heads; performance-notes.md): the
// butterfly encoder was issue-bound at ~171 warp instructions per vector (r54: f16 input 132 us,
// 43 % of a copy). The tensor-core encoder with float sums executes ~102 (r83: f16 and bf16 95 us,
// 60 %); f32 through it (r88) 145 us, 70 % of its copy time, from 177 us. The grid lookups without
// bank conflicts (r97): ~99 instructions, f16 93-94 us (61 %), f32 144 us (70.5 %). The norm from
// the tokens' Gram matrix on the tensor cores (r201): f16 87 us. Timed as the GPU's work (queued,
// r204: the earlier figures held ~4 us of host launch latency) 85.5 us; branch-free loads,
// compiled-in row bytes and a two-FFMA code bucket (r210), the last butterflies fused with the
// scaling (r212): f16 78.8 us (73 % of a copy), bf16 77.8 us, f32 130 us (79 %) (r213).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <type_traits>

#include "device_common.cuh"
#include "launch.hpp"
#include "programmatic_launch.cuh"

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
__device__ __forceinline__ uint32_t lds_u32(uint32_t address) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(address));
  return v;
}

// A code grid in shared memory, in one of two layouts; each bucket holds its boundary and 4 x the
// code below it (the byte offset of its level, which the packing shifts by 2 less).
// - Pairs (grid_pairs: f16/bf16 inputs, formats compiled in): an 8-byte {bound, code4} entry per
//   bucket, one load for both, stored kGridCopies times, copy k for the lanes l with l % 16 = k:
//   the 16 lanes of an 8-byte load's phase hit 16 different bank pairs whatever their buckets
//   (the 2 wavefronts a warp's 256 bytes need).
// - Columns (the other kernels): bound[b][l] and code4[b][l] for lane l, two 4-byte loads at one
//   address and never a bank conflict.
// r54-r92 kept the 64 bounds and the 64 bases once each: two loads at two addresses, and ~2.1 M
// bank conflicts per 6.8 M shared loads in the f16 kernel (ncu r95).
struct alignas(8) GridEntry {
  float bound;
  uint32_t code4;
};
inline constexpr int kGridCopies = 16;
struct GridColumns {
  float bound[kCodeBuckets][32];
  uint32_t code4[kCodeBuckets][32];
};
union GridTable {
  GridEntry pairs[kCodeBuckets * kGridCopies];
  GridColumns columns;
};
// Bytes from one bucket to the next, in both layouts.
inline constexpr uint32_t kGridBucketBytes = 128;
static_assert(kGridCopies * sizeof(GridEntry) == kGridBucketBytes && 32 * 4 == kGridBucketBytes);

// The grid layout (GridTable) of the kernels encoding f16/bf16 inputs in formats known at compile
// time (kBits != 0); the f32 kernels, the tensor-core kernel that switches on the formats and the
// butterfly kernel spilled 12-32 bytes with the pairs' per-lane copy offset, and take columns.
constexpr bool grid_pairs(InputKind input, int bits) { return input != InputKind::f32 && bits != 0; }

// One format's codebook in shared memory (addresses) and its code grid (launch.hpp).
struct CodeTables {
  uint32_t bounds;   // 2^b - 1 floats (tq8's bisection)
  uint32_t levels;   // 2^b floats
  // The GridTable (tq2, tq3, tq4) plus this lane's offset in it, less kGridOriginBits buckets
  // (mod 2^32): code_bucket_bits() counts from the origin's bits.
  uint32_t grid_less_origin;
  float scale, offset;
};

// 4 x the count of boundaries <= z (Codebook::quantize), from the grid's pairs or its columns.
template <int kBits, bool kPairLoad>
__device__ __forceinline__ uint32_t level_offset_of(float z, const CodeTables& t, float middle) {
  if constexpr (kBits <= 4) {
    // t.grid_less_origin + bits * 128 = the grid + bucket * 128: one IMAD.
    const uint32_t at = t.grid_less_origin + code_bucket_bits(z, t.scale, t.offset) * kGridBucketBytes;
    float bound;
    uint32_t code4;
    if constexpr (kPairLoad) {
      asm volatile("ld.shared.v2.b32 {%0, %1}, [%2];" : "=f"(bound), "=r"(code4) : "r"(at));
    } else {
      bound = lds_f32(at + offsetof(GridColumns, bound));
      code4 = lds_u32(at + offsetof(GridColumns, code4));
    }
    // A compare and a predicated add (the ternary became a compare, a select and a multiply-add).
    asm("{\n.reg .pred p;\nsetp.ge.f32 p, %1, %2;\n@p add.u32 %0, %0, 4;\n}" : "+r"(code4) : "f"(z), "f"(bound));
    return code4;
  } else {
    // Bisection over the 2^b - 1 sorted boundaries; `at` is the address of boundary `code`.
    constexpr int kCodes = 1 << kBits;
    uint32_t at = t.bounds + (middle <= z ? 4 * (kCodes / 2) : 0);
#pragma unroll
    for (int step = kCodes / 4; step > 0; step >>= 1) at += lds_f32(at + 4 * (step - 1)) <= z ? 4 * step : 0;
    return at - t.bounds;
  }
}

// Calls f(j, coordinate j of the lane times unit) for the lane's coordinates j < count; count is 32,
// 16 or 0: two halves keep every index compile-time. kLastPairs (quantize_lane): with the rotation's
// butterflies of length 4 fused in, one product per pair.
template <bool kLastPairs, typename F>
__device__ __forceinline__ void for_lane_coordinates(const float (&r)[kLaneCoords], float unit, int count, F&& f) {
#pragma unroll
  for (int half = 0; half < kLaneCoords; half += kLaneCoords / 2) {
    if (half >= count) break;
#pragma unroll
    for (int j = half; j < half + kLaneCoords / 2; ++j) {
      if constexpr (kLastPairs) {
        const float upper = r[j | 4] * unit;
        f(j, (j & 4) ? fmaf(r[j & ~4], unit, -upper) : fmaf(r[j], unit, upper));
      } else {
        f(j, r[j] * unit);
      }
    }
  }
}

// Codes of the lane's coordinates r[j] * to_unit, packed as the row's little-endian bit stream
// (format.hpp: code i at bits [b i, b i + b)), into kBits words: the lane's 32 codes are exactly
// kBits 32-bit words. Coordinates past head_dim (j >= count) get code 0 and add nothing to the
// least-squares sums zc = sum z c and cc = sum c^2, which the lane keeps in float (four chains of
// at most 8 terms; test_cuda's kScaleRelative gives the bound this leads to).
// kLastPairs: r still lacks the rotation's butterflies of length 4 (pairs j, j + 4; the tensor-core
// encoder), which fuse with the scaling: z = fma(r[j], to_unit, +-r[j + 4] to_unit) is 3
// instructions per pair instead of 2 FADD and 2 FMUL (z moves by an ulp from the CPU's, a boundary
// tie at most, as the mma's order of sums).
template <int kBits, bool kPairLoad, bool kLastPairs = false>
__device__ __forceinline__ void quantize_lane(const float (&r)[kLaneCoords], float to_unit, int count,
                                              const CodeTables& t, uint32_t (&words)[kBits], float& zc,
                                              float& cc) {
  float zc_part[4] = {0.0f, 0.0f, 0.0f, 0.0f}, cc_part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  const float middle = kBits > 4 ? lds_f32(t.bounds + 4 * ((1 << kBits) / 2 - 1)) : 0.0f;
#pragma unroll
  for (int w = 0; w < kBits; ++w) words[w] = 0;
  for_lane_coordinates<kLastPairs>(r, to_unit, count, [&](int j, float z) {
    const uint32_t code4 = level_offset_of<kBits, kPairLoad>(z, t, middle);  // 4 code
    const float c = lds_f32(t.levels + code4);
    zc_part[j % 4] = fmaf(z, c, zc_part[j % 4]);
    cc_part[j % 4] = fmaf(c, c, cc_part[j % 4]);
    // The codes' bits are disjoint: adding them is or-ing them, in one shift-add.
    const int bit = kBits * j, at = bit % 32;
    words[bit / 32] += at >= 2 ? code4 << (at - 2) : code4 >> (2 - at);
    if (at + kBits > 32) words[bit / 32 + 1] += code4 >> (34 - at);
  });
  zc = (zc_part[0] + zc_part[1]) + (zc_part[2] + zc_part[3]);
  cc = (cc_part[0] + cc_part[1]) + (cc_part[2] + cc_part[3]);
}

// 8-bit codes of u = r[j] * unit (z's expression, quantize_lane), starting from the codes of z in
// `words` (code j in byte j % 4 of word j / 4): u differs from z by the ratio of the stored scale to
// the norm's, so a code moves by a level or two, and a walk over the sorted boundaries from the old
// code ends where the bisection does (the count of boundaries <= u), with 2 loads per coordinate
// instead of 8. f16 input, 32k tokens x 8 heads (r246, r248): tq8 379 us with one search, 705 with
// the bisection twice, 572 with this walk; k8v4 230, 375, 300 (the encoder is issue-bound).
template <bool kLastPairs>
__device__ __forceinline__ void requantize_walk(const float (&r)[kLaneCoords], float unit, int count,
                                                const CodeTables& t, uint32_t (&words)[8]) {
  uint32_t moved[8] = {0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u};
  for_lane_coordinates<kLastPairs>(r, unit, count, [&](int j, float u) {
    uint32_t code = (words[j / 4] >> (8 * (j % 4))) & 0xffu;
    // Boundary c - 1 is the lower edge of level c, boundary c its upper (255 boundaries). Both
    // edges load at once; a code that moves walks on (rare: one level mostly).
    const float lower = code > 0 ? lds_f32(t.bounds + 4 * (code - 1)) : -INFINITY;
    const float upper = code < 255 ? lds_f32(t.bounds + 4 * code) : INFINITY;
    if (lower > u) {
      do --code;
      while (code > 0 && lds_f32(t.bounds + 4 * (code - 1)) > u);
    } else if (upper <= u) {
      do ++code;
      while (code < 255 && lds_f32(t.bounds + 4 * code) <= u);
    }
    moved[j / 4] |= code << (8 * (j % 4));
  });
#pragma unroll
  for (int w = 0; w < 8; ++w) words[w] = moved[w];
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
  double sqrt_d;
  // The stored scale is s / sqrt(d) for normalised blocks; the tensor-core rotation leaves its
  // block unnormalised, so there s / (sqrt(d) sqrt(block)). This is the reciprocal.
  double inv_scale_divisor;
  // The rotated coordinate per unit of the lane's: 1, or float(1 / sqrt(block)) for the
  // tensor-core rotation's unnormalised block (codes against the stored scale, format.hpp).
  float coordinate_unit;
};

// The group's squared norm of x. Float sums (four chains of 8 per lane, then the group's tree)
// unless a square could leave float's normal range (a sum past FLT_MAX or under 2^-80, where the
// squares lost below 2^-126 would matter): then, rarely, the lanes of the warp sum in double.
__device__ __forceinline__ double group_norm2(const float (&x)[kLaneCoords], int lanes) {
  float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int j = 0; j < kLaneCoords; ++j) part[j % 4] = fmaf(x[j], x[j], part[j % 4]);
  const float sum = group_sum((part[0] + part[1]) + (part[2] + part[3]), lanes);
  const bool in_range = sum >= 0x1p-80f && sum <= 3.0e38f;  // false for NaN
  if (__all_sync(kFullMask, in_range)) return sum;
  double wide[4] = {0.0, 0.0, 0.0, 0.0};
#pragma unroll
  for (int j = 0; j < kLaneCoords; ++j) wide[j % 4] += static_cast<double>(x[j]) * x[j];
  const double wide_sum = group_sum((wide[0] + wide[1]) + (wide[2] + wide[3]), lanes);
  return in_range ? sum : wide_sum;
}

// The lane's part of a rotated vector x of squared norm norm2: codes and scale; stores the lane's
// words of the row and, from the group's lane 0, the scale, unless !write. Every lane of the warp
// calls it (shuffles). kLastPairs: quantize_lane()'s.
template <int kBits, bool kPairLoad, bool kLastPairs = false>
__device__ __forceinline__ void encode_lane(const float (&x)[kLaneCoords], double norm2, const LaneVector& v,
                                            bool write, bool least_squares, const CodeTables& tables, uint8_t* row,
                                            int row_bytes, uint16_t* scale_bits) {
  // No double divisions (a called subroutine, which spilled with the tensor-core encoder's
  // registers live): rsqrt and __drcp_rn are within an ulp of double, far below float's.
  const double inv_norm = rsqrt(norm2);  // inf for a zero vector (codes unused), 0 for inf
  const double norm = isinf(norm2) ? norm2 : norm2 * inv_norm;
  const bool zero = norm2 == 0.0;  // zero vector: codes 0 and scale 0 decode to exactly 0
  const float to_unit = static_cast<float>(v.sqrt_d * inv_norm);
  uint32_t words[kBits];
  float zc, cc;
  quantize_lane<kBits, kPairLoad, kLastPairs>(x, to_unit, v.count, tables, words, zc, cc);
  zc = group_sum(zc, v.lanes);
  cc = group_sum(cc, v.lanes);
  if (!write) return;
  // The stored scale's bfloat16 bits, rounded to nearest even as the host's float_to_bf16
  // (ScalePair, layout.hpp). (Every lane of the group has the same norm, zc and cc.)
  const auto stored_bits = [&] {
    const double s = least_squares && cc > 0.0f ? norm * static_cast<double>(zc) * __drcp_rn(cc) : norm;
    return zero ? uint16_t{0} : __bfloat16_as_ushort(__float2bfloat16_rn(static_cast<float>(s * v.inv_scale_divisor)));
  };
  uint16_t bits = 0;
  if constexpr (codes_follow_stored_scale(kBits)) {
    // The codes again, of r / stored (format.hpp; quantize.cpp's encode_vector: its float
    // reciprocal, times the lane's coordinate unit), over the lane's registers: no shuffles. A
    // stored 0 or inf keeps the codes of z (to_unit), as the CPU's.
    bits = stored_bits();
    requantize_walk<kLastPairs>(x, stored_scale_unit(bits, v.coordinate_unit, to_unit), v.count, tables, words);
  }
#pragma unroll
  for (int w = 0; w < kBits; ++w) words[w] = zero ? 0u : words[w];
  store_lane_words<kBits>(words, row, 4 * kBits * v.group_lane, row_bytes);
  // Padding the group's lanes do not cover (a row of 16 bytes and fewer lane words: head_dim 32).
  for (int at = 4 * kBits * v.lanes + 4 * v.group_lane; at < row_bytes; at += 4 * v.lanes)
    *reinterpret_cast<uint32_t*>(row + at) = 0u;
  if (v.group_lane == 0) {
    if constexpr (!codes_follow_stored_scale(kBits)) bits = stored_bits();
    *scale_bits = bits;
  }
}

// The butterflies of lengths 1, 2, ... below kEnd over a lane's 32 coordinates: the lower of a
// pair keeps a + b, the upper a - b. At length 16 (the lane's two halves) the upper is
// fma(a, join_halves, -b): join_halves 0 keeps an upper half of zeros (a block of 16 followed by
// coordinates past head_dim); fma(a, 1, -b) rounds as a - b.
template <int kEnd>
__device__ __forceinline__ void lane_butterflies(float (&x)[kLaneCoords], float join_halves = 1.0f) {
#pragma unroll
  for (int h = 1; h < kEnd; h <<= 1) {
#pragma unroll
    for (int j = 0; j < kLaneCoords; ++j) {
      if (j & h) continue;
      const float lo = x[j], hi = x[j + h];
      x[j] = lo + hi;
      x[j + h] = h == kLaneCoords / 2 ? fmaf(lo, join_halves, -hi) : lo - hi;
    }
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

// The codebooks of the key [0] and value [1] formats in shared memory: levels, the code grid
// (tq2 to tq4) or the boundaries (tq8). The caller's barrier publishes them.
struct alignas(16) SharedCodebooks {  // 16: stage_codebooks stores 16 bytes at a time
  float levels[2][kMaxCodes];
  float bounds[2][kMaxCodes];
  GridTable grids[2];  // pairs or columns: kPairLoad of the kernel's encode_rotated()
};

// kPairs: the grids' layout (GridTable), encode_rotated()'s kPairLoad. Every thread issues all of
// its loads (at most one level and one bucket or boundary per side) before its stores: as loops of
// load-then-store iterations, a one-token append (a decode step) waited for L2 once per
// iteration. Four threads store each bucket's copies, 32 bytes or 64 (columns) each.
template <bool kPairs>
__device__ void stage_codebooks(const AppendLaunch& a, SharedCodebooks& books) {
  static_assert(kAppendWarps * 32 >= kMaxCodes && 4 * kCodeBuckets <= kMaxCodes,
                "a thread per level, boundary and quarter bucket (blocks of at least kMaxCodes threads)");
  const int i = threadIdx.x;
  float level[2] = {0.0f, 0.0f}, bound[2] = {0.0f, 0.0f};
  CodeBucket bucket[2] = {};
  int codes[2] = {0, 0};  // of the key and value formats; 0 for an f16 side
#pragma unroll
  for (int which = 0; which < 2; ++which) {
    const Format f = which ? a.cache.format.value : a.cache.format.key;
    if (!quantized(f)) continue;
    const int n = codes[which] = 1 << bits_of(f);
    if (i < n) level[which] = (which ? a.cache.v_levels : a.cache.k_levels)[i];
    if (n - 1 <= kMaxGridBoundaries) {
      if (i < 4 * kCodeBuckets) bucket[which] = (which ? a.v_grid : a.k_grid).buckets[i >> 2];
    } else if (i < n - 1) {
      bound[which] = (which ? a.v_boundaries : a.k_boundaries)[i];
    }
  }
#pragma unroll
  for (int which = 0; which < 2; ++which) {
    const int n = codes[which];
    if (n == 0) continue;
    if (i < n) books.levels[which][i] = level[which];
    if (n - 1 <= kMaxGridBoundaries) {
      if (i >= 4 * kCodeBuckets) continue;
      const int b = i >> 2, part = i & 3;
      const float bd = bucket[which].bound;
      const uint32_t c4 = 4 * bucket[which].base;
      if constexpr (kPairs) {  // copies 4 part .. 4 part + 3 of bucket b
        const uint4 two = make_uint4(__float_as_uint(bd), c4, __float_as_uint(bd), c4);
        auto* at = reinterpret_cast<uint4*>(&books.grids[which].pairs[b * kGridCopies + 4 * part]);
        at[0] = two, at[1] = two;
      } else {  // lanes 8 part .. 8 part + 7 of bucket b
        const uint4 bounds = make_uint4(__float_as_uint(bd), __float_as_uint(bd), __float_as_uint(bd), __float_as_uint(bd));
        const uint4 codes = make_uint4(c4, c4, c4, c4);
        auto* bat = reinterpret_cast<uint4*>(&books.grids[which].columns.bound[b][8 * part]);
        auto* cat = reinterpret_cast<uint4*>(&books.grids[which].columns.code4[b][8 * part]);
        bat[0] = bounds, bat[1] = bounds, cat[0] = codes, cat[1] = codes;
      }
    } else if (i < n - 1) {
      books.bounds[which][i] = bound[which];
    }
  }
}

// Where one vector (a token's key or value of one KV head) comes from and goes to.
struct VectorJob {
  bool active;         // a token of the chunk that the cache keeps
  int which;           // 0 key, 1 value
  int seq, kv_head;
  int64_t position;
  const void* input;   // the lane's part of the input: `count` coordinates at element `in_at`
  std::size_t in_at;
  int count;
  uint8_t* row;
  int row_bytes;
  uint16_t* scale_bits;  // the vector's half of its position's ScalePair
  unsigned group_bits;  // the lanes of the vector's group in a warp ballot
};

// Whether the group's inputs are finite (lane_finite: this lane's); a non-finite one is recorded
// once per vector and its row left as it was. Every lane of the warp calls it.
__device__ __forceinline__ bool group_finite(bool lane_finite, const VectorJob& job, int group_lane,
                                             const AppendLaunch& a) {
  const bool bad = (__ballot_sync(kFullMask, !lane_finite) & job.group_bits) != 0;
  if (job.active && bad && group_lane == 0)
    record_failure(a.status, kAppendNonFinite, job.seq, job.position, job.kv_head, job.which);
  return !bad;
}

// Encodes the rotated vector x (the lane's coordinates; norm2: the group's squared norm of x) of
// `job` in format f (kBits: its bits when known at compile time, 0 when not). Every output of a butterfly depends on both inputs, so
// a non-finite input makes its whole block, and the norm, non-finite; a finite input may also
// overflow the rotation: only then (rare) are the inputs themselves checked. Every lane of the
// warp calls it (shuffles). kLastPairs: quantize_lane()'s.
template <InputKind kInput, int kBits = 0, bool kLastPairs = false>
__device__ __forceinline__ void encode_rotated(const float (&x)[kLaneCoords], double norm2, const LaneVector& v,
                                               Format f, const VectorJob& job, const SharedCodebooks& books,
                                               const AppendLaunch& a) {
  const bool suspect = !isfinite(norm2);
  const bool write = (!__any_sync(kFullMask, suspect) ||
                      group_finite(!suspect || lane_input_finite<kInput>(job.input, job.in_at, job.count), job,
                                   v.group_lane, a)) &&
                     job.active;
  const CodeGrid& grid = job.which ? a.v_grid : a.k_grid;
  constexpr bool kPairLoad = grid_pairs(kInput, kBits);
  const uint32_t lane_offset = kPairLoad ? threadIdx.x % kGridCopies * sizeof(GridEntry) : threadIdx.x % 32 * 4;
  const CodeTables tables{static_cast<uint32_t>(__cvta_generic_to_shared(books.bounds[job.which])),
                          static_cast<uint32_t>(__cvta_generic_to_shared(books.levels[job.which])),
                          static_cast<uint32_t>(__cvta_generic_to_shared(&books.grids[job.which])) + lane_offset -
                              kGridOriginBits * kGridBucketBytes,
                          grid.scale,
                          grid.offset};
  auto encode = [&](auto bits) {
    encode_lane<decltype(bits)::value, kPairLoad, kLastPairs>(x, norm2, v, write, a.least_squares, tables,
                                                              job.row, job.row_bytes, job.scale_bits);
  };
  if constexpr (kBits != 0) {
    encode(std::integral_constant<int, kBits>{});
  } else {
    switch (f) {
      case Format::tq2: encode(std::integral_constant<int, 2>{}); break;
      case Format::tq3: encode(std::integral_constant<int, 3>{}); break;
      case Format::tq4: encode(std::integral_constant<int, 4>{}); break;
      default: encode(std::integral_constant<int, 8>{}); break;
    }
  }
}

// Whether token t of the chunk is kept: a ring keeps only the newest `capacity` tokens of a chunk;
// a contiguous cache, positions below capacity (the host refused an overflow on direct calls; a
// graph replay past capacity drops the tokens and commit_tokens flags it).
__device__ __forceinline__ bool token_kept(const AppendLaunch& a, int t, int64_t position) {
  const CacheView& c = a.cache;
  return t < a.n_tokens && (c.ring ? !(a.n_tokens > c.capacity && t < a.n_tokens - c.capacity) : position < c.capacity);
}

// The job of the key (which 0) or value (1) of token t of the block's sequence, which held
// tokens_before tokens before the chunk: its row, its scale, the lane's inputs.
__device__ __forceinline__ VectorJob vector_job(const AppendLaunch& a, int which, int t, int64_t tokens_before,
                                                int lane_first, int lane_count, unsigned group_bits) {
  const CacheView& c = a.cache;
  VectorJob job;
  job.which = which;
  job.seq = a.seq_begin + blockIdx.z;
  job.kv_head = blockIdx.y;
  job.position = tokens_before + t;
  job.active = token_kept(a, t, job.position);
  job.count = job.active ? lane_count : 0;
  job.input = which ? a.v : a.k;
  job.in_at = ((static_cast<std::size_t>(blockIdx.z) * a.n_tokens + t) * c.kv_heads + job.kv_head) * c.head_dim +
              lane_first;
  const int slot = job.active ? position_slot(job.position, c.capacity, c.ring) : 0;
  const std::size_t row = row_index(c, job.seq, job.kv_head, slot);
  job.row_bytes = static_cast<int>(which ? c.v_row_bytes : c.k_row_bytes);
  job.row = writable(which ? c.v_codes : c.k_codes) + row * job.row_bytes;
  ScalePair* pair = writable(c.scales) + row;
  job.scale_bits = which ? &pair->v_bits : &pair->k_bits;
  job.group_bits = group_bits;
  return job;
}

// Butterfly encoder, every input type and head dim: the rotation in registers and shuffles.
template <InputKind kInput>
__global__ void __launch_bounds__(kAppendWarps * 32, kAppendBlocksPerSm) append_kernel(const AppendLaunch a, double sqrt_head_dim) {
  __shared__ SharedCodebooks books;
  const CacheView& cache = a.cache;
  wait_for_previous_grid();  // a programmatic dependent: the kernel before writes the inputs
  allow_next_grid();         // the counter commit may be scheduled; it waits for this grid
  prefetch_lane_inputs<kInput>(a);
  stage_codebooks<grid_pairs(kInput, 0)>(a, books);
  __syncthreads();  // the only block barrier: the rest is per warp

  const int D = cache.head_dim;
  LaneVector v;
  v.lanes = lanes_per_vector(D);
  const int log2_lanes = __ffs(v.lanes) - 1;
  const int lane = threadIdx.x & 31;
  v.group_lane = lane & (v.lanes - 1);
  const int group = lane >> log2_lanes;
  const int t = ((blockIdx.x * kAppendWarps + static_cast<int>(threadIdx.x >> 5)) << (5 - log2_lanes)) + group;
  const int first = kLaneCoords * v.group_lane;
  v.count = min(max(D - first, 0), kLaneCoords);
  // Bits of this lane's group in a warp ballot.
  const unsigned group_bits = (v.lanes == 32 ? kFullMask : (1u << v.lanes) - 1u) << (group * v.lanes);
  if (__all_sync(kFullMask, !token_kept(a, t, cache.tokens[a.seq_begin + blockIdx.z] + t)))
    return;  // whole warps only: the rest shuffles

  v.sqrt_d = sqrt_head_dim;
  v.inv_scale_divisor = 1.0 / sqrt_head_dim;
  v.coordinate_unit = 1.0f;
  // The rotation of the lane's coordinates. The Hadamard blocks are D's set bits, largest first:
  // the one holding `first` is bit_floor(D ^ first); block_factor is float(1 / sqrt(block)), as
  // the CPU's block_hadamard(); signs bit j negates coordinate first + j.
  const int log2_block = 31 - __clz(D ^ first);
  const int block = v.count > 0 ? 1 << log2_block : 0;
  const float block_factor = v.count > 0 ? block_factor_of(log2_block) : 0.0f;
  const uint32_t lane_signs =
      v.count > 0 ? cache.sign_bits[static_cast<std::size_t>(blockIdx.y) * cache.sign_words + v.group_lane] : 0u;
  // Length 16 joins the lane's two halves unless its block is 16 (then the upper half is past
  // head_dim): upper = fma(lower, 1, -upper) rounds lower - upper once; with 0 it keeps the zeros.
  const float join_halves = block > kLaneCoords / 2 ? 1.0f : 0.0f;

#pragma unroll 1
  for (int which = 0; which < 2; ++which) {
    // (The token count is reloaded rather than kept: a register more spills at this kernel's 80.)
    const VectorJob job = vector_job(a, which, t, cache.tokens[a.seq_begin + blockIdx.z], first, v.count, group_bits);
    const Format f = which ? cache.format.value : cache.format.key;
    float x[kLaneCoords];
    load_lane<kInput>(job.input, job.in_at, job.count, (reinterpret_cast<uintptr_t>(job.input) & 15) == 0, x);

    if (!quantized(f)) {  // a non-finite input leaves its row as it was and is recorded
      float probe = 0.0f;
#pragma unroll
      for (int j = 0; j < kLaneCoords; ++j) probe = fmaf(x[j], 0.0f, probe);
      const bool write = group_finite(!isnan(probe), job, v.group_lane, a) && job.active;
      if (write) store_half_row(x, job.row + 2 * first, 2 * first, job.row_bytes);
      if (write && v.group_lane == 0) *job.scale_bits = __bfloat16_as_ushort(__float2bfloat16_rn(1.0f));
      continue;
    }

    // r = H S x: signs, then the butterflies of length 1, 2, 4, ... (fwht_unnormalized()). The
    // empty asm keeps the 32 shifted sign masks from being hoisted out of the loop (32 registers).
    uint32_t signs = lane_signs;
    asm("" : "+r"(signs));
#pragma unroll
    for (int j = 0; j < kLaneCoords; ++j)
      x[j] = __int_as_float(__float_as_int(x[j]) ^ static_cast<int>((signs << (31 - j)) & 0x80000000u));
    // Lengths 1 to 8 stay inside every block (blocks are 16 or more); lanes past head_dim hold
    // zeros and keep them.
    lane_butterflies<kLaneCoords>(x, join_halves);
    for (int m = 1; m < v.lanes; m <<= 1) {
      // Partner lane l ^ m holds the other operands. The lower lane keeps a + b, the upper a - b:
      // fma(+-1, own, partner) rounds the exact own +- partner once, as the CPU's add or subtract.
      const bool on = m * kLaneCoords < block;
      const float own_sign = (v.group_lane & m) ? -1.0f : 1.0f;
#pragma unroll
      for (int j = 0; j < kLaneCoords; ++j) {
        const float partner = __shfl_xor_sync(kFullMask, x[j], m);
        if (on) x[j] = fmaf(own_sign, x[j], partner);
      }
    }
#pragma unroll
    for (int j = 0; j < kLaneCoords; ++j) x[j] *= block_factor;
    encode_rotated<kInput>(x, group_norm2(x, v.lanes), v, f, job, books, a);
  }
}

// ---- tensor-core encoder: head_dim 128, both formats quantized ----
//
// H_128 = H_16 (x) H_8 on coordinates i = 8 b + a (b < 16 outer, a < 8 inner): for each a, the
// 16-point transform over b is an m16n8k16 mma pair whose rows g < 8 are 8 tokens (rows 8-15 are
// zeros: two tokens per lane would need 64 registers of outputs), exact inputs (f16/bf16, f32 as
// three bf16 parts, and +-1) with fp32 sums; the 8-point transform over a then runs in registers.
// B's columns are permuted so that lane (g, t) receives b = 4t .. 4t + 3, i.e. coordinates
// [32 t, 32 t + 32) of token g: the butterfly encoder's layout (4 lanes of 32 coordinates per
// vector), so the same encode_rotated() follows. The signs S are folded into B (one B per a: 8 x 2 fragments, built
// once per block in shared memory). 1/sqrt(128) is left out of the rotation and out of the scale
// instead (z is scale-invariant).
//
// Each warp loops over tiles of 8 tokens (a grid of about one wave), and loads the next rows while
// it encodes: the values while it encodes the keys, the next tile's keys while it encodes the
// values. (One tile per warp and 16 tokens in registers, run r81: 108 warp instructions per vector
// but issue slots 55 % busy, waiting on the loads.)
//
// The rotation's sums run in another order than the CPU's butterflies, so rotated coordinates may
// differ by float ulps: as with the order of the norm's sums, only a z within ~1e-6 of a boundary
// can get the neighbouring code (the tests bound both).
inline constexpr int kMmaHeadDim = 128;
inline constexpr int kMmaInner = 8;    // a: H_8, in registers
inline constexpr int kMmaTokens = 8;   // tokens per warp tile (the mma's rows g)
inline constexpr int kMmaWarps = 8;        // warps per block
static_assert(kMmaWarps * 32 >= kMaxCodes, "stage_codebooks: a thread per level and boundary");
// 128 registers. Fewer spill: 3 blocks of 8 warps were 12 % slower (r82), 5 blocks of 4 no faster (r83).
inline constexpr int kMmaBlocksPerSm = 2;

// The mma's operand type: f16 for f16 inputs, bf16 for bf16 inputs and for the three bf16 parts
// of an f32 input (below).
template <InputKind kInput>
inline constexpr bool kMmaF16 = kInput == InputKind::f16;

// d += a * b, m16n8k16 with f32 accumulators: a0, a2 rows g (k 2t, 2t + 1 | 2t + 8, 2t + 9), a1, a3
// rows g + 8.
template <bool kF16>
__device__ __forceinline__ void mma_rotate(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                           uint32_t b0, uint32_t b1) {
  if constexpr (kF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

// B fragments for inner index a, lane (g, t): for n tile j, column g stands for output
// b = 4 (g >> 1) + 2 j + (g & 1); rows k = 2t, 2t + 1 (first register) and 2t + 8, 2t + 9
// (second). Entry (k, b) = s(8 k + a) H_16(k, b), H_16(k, b) = (-1)^popcount(k & b), as the
// operand type's +-1.
template <bool kF16>
__device__ uint4 rotation_fragments(const uint32_t* signs, int a, int lane) {
  constexpr uint32_t kOne = kF16 ? 0x3c00u : 0x3f80u;
  const int g = lane >> 2, t = lane & 3;
  auto entry = [&](int k, int b) {
    const int i = 8 * k + a;
    const uint32_t negative = (__popc(k & b) + (signs[i >> 5] >> (i & 31))) & 1u;
    return kOne | negative << 15;
  };
  auto pair = [&](int k, int b) { return entry(k, b) | entry(k + 1, b) << 16; };
  const int b0 = 4 * (g >> 1) + (g & 1), b1 = b0 + 2;
  return make_uint4(pair(2 * t, b0), pair(2 * t + 8, b0), pair(2 * t, b1), pair(2 * t + 8, b1));
}

// A lane's inputs of one token, as loaded: 32 elements, as 16 pairs (f16, bf16) or 32 floats.
template <InputKind kInput>
inline constexpr int kRowWords = kInput == InputKind::f32 ? 32 : 16;

// Lane t's inputs of one token: elements [16 t, 16 t + 16) and [16 t + 64, 16 t + 80) of the row
// at element `at` (words [0, W/2) and [W/2, W)). The row must exist: the kernel clamps a token
// past the chunk to its last (its values go nowhere), so that no load waits behind a branch (r210).
template <InputKind kInput>
__device__ __forceinline__ void load_mma_row(const void* input, std::size_t at, int t, bool vector_loads,
                                             uint32_t (&p)[kRowWords<kInput>]) {
  constexpr int kHalf = kRowWords<kInput> / 2;  // words per 16 elements
  constexpr int kElementBytes = kInput == InputKind::f32 ? 4 : 2;
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    const char* q = static_cast<const char*>(input) + kElementBytes * (at + 16 * t + 64 * c);
    if (vector_loads) {
#pragma unroll
      for (int i = 0; i < kHalf / 4; ++i) {
        const uint4 w = __ldg(reinterpret_cast<const uint4*>(q) + i);
        p[kHalf * c + 4 * i] = w.x, p[kHalf * c + 4 * i + 1] = w.y, p[kHalf * c + 4 * i + 2] = w.z,
                        p[kHalf * c + 4 * i + 3] = w.w;
      }
    } else if constexpr (kInput == InputKind::f32) {
#pragma unroll
      for (int i = 0; i < kHalf; ++i) p[kHalf * c + i] = reinterpret_cast<const uint32_t*>(q)[i];
    } else {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(q);
#pragma unroll
      for (int i = 0; i < kHalf; ++i) p[kHalf * c + i] = h[2 * i] | uint32_t{h[2 * i + 1]} << 16;
    }
  }
}

// x - (x's top 16 bits): exact, the float's significand below its top 8 bits.
__device__ __forceinline__ uint32_t below_bf16(uint32_t x) {
  return __float_as_uint(__uint_as_float(x) - __uint_as_float(x & 0xffff0000u));
}

// Rotates the warp's 8 tokens (p: the lane's inputs of token g): y gets the lane's 32 coordinates
// [32 t, 32 t + 32) of H S x, unnormalised (times sqrt(128)). An f32 input is the exact sum of
// three bf16 parts of 8 significant bits each (x's top 16 bits, then those of the rest, then the
// rest; exact for |x| above ~2^-110): the mma's rows g take the first and third parts in two
// passes, rows g + 8 the second part, and the two rows' fp32 sums are added (r85: three passes
// into zero rows 8-15 took 149 us for the 32k chunk). Returns ||x_g||^2 of the lane's token with
// kGram (f16/bf16 inputs: the diagonal of the tile's Gram matrix, one more mma per a), else 0;
// with kGram y also lacks the butterflies of length 4, which the quantizer fuses with its scaling.
template <InputKind kInput, bool kGram>
__device__ __forceinline__ float rotate_mma(const uint32_t (&p)[kRowWords<kInput>], const uint4* fragments, int lane,
                                            float (&y)[kLaneCoords]) {
  constexpr bool kF16 = kMmaF16<kInput>;
  float gram[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // f16/bf16: <x_g, x_n> in (row g, columns 2t, 2t + 1)
#pragma unroll
  for (int a = 0; a < kMmaInner; ++a) {
    // A(g, k) = x_g[8 k + a]: k = 2t, 2t + 1 are elements a and 8 + a of the first 16, k = 2t + 8,
    // 2t + 9 the same of the second 16.
    const uint4 b = fragments[a * 32 + lane];
    float c0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, c1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    auto multiply = [&](uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3) {
      mma_rotate<kF16>(c0, a0, a1, a2, a3, b.x, b.y);
      mma_rotate<kF16>(c1, a0, a1, a2, a3, b.z, b.w);
    };
    if constexpr (kInput == InputKind::f32) {
      constexpr uint32_t kTops = 0x7632u;  // the top halves of two words
      const uint32_t e[4] = {p[a], p[8 + a], p[16 + a], p[24 + a]};
      uint32_t rest[4], last[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) rest[i] = below_bf16(e[i]), last[i] = below_bf16(rest[i]);
      multiply(__byte_perm(last[0], last[1], kTops), 0u, __byte_perm(last[2], last[3], kTops), 0u);
      multiply(__byte_perm(e[0], e[1], kTops), __byte_perm(rest[0], rest[1], kTops), __byte_perm(e[2], e[3], kTops),
               __byte_perm(rest[2], rest[3], kTops));
      c0[0] += c0[2], c0[1] += c0[3], c1[0] += c1[2], c1[1] += c1[3];
    } else {
      const uint32_t sel = (a & 1) ? 0x7632u : 0x5410u;
      const uint32_t a0 = __byte_perm(p[a >> 1], p[4 + (a >> 1)], sel);
      const uint32_t a2 = __byte_perm(p[8 + (a >> 1)], p[12 + (a >> 1)], sel);
      // Rows g + 8 of A take whatever their registers hold: only rows g of the products are used,
      // and zeros there cost a move per register.
      uint32_t a1, a3;
      asm volatile("" : "=r"(a1));
      asm volatile("" : "=r"(a3));
      multiply(a0, a1, a2, a3);
      // The tokens' Gram matrix X X^T over these 16 coordinates: B(k, n) = x_n[8 k + a] is this
      // lane's own A pair (a0, a2) as column g. Products of f16/bf16 are exact in the fp32 sums.
      if constexpr (kGram) mma_rotate<kF16>(gram, a0, a1, a2, a3, a0, a2);
    }
    // c0: b = 4t, 4t + 1; c1: b = 4t + 2, 4t + 3 (row g). j = 8 (b - 4t) + a.
    y[a] = c0[0], y[8 + a] = c0[1], y[16 + a] = c1[0], y[24 + a] = c1[1];
  }
  // H_8 over a (the low 3 bits of j); with kGram its length-4 butterflies are left to the quantizer
  // (quantize_lane's kLastPairs).
  lane_butterflies<kGram ? kMmaInner / 2 : kMmaInner>(y);
  if constexpr (!kGram) return 0.0f;
  // ||x_g||^2 sits in lane (g, g / 2), column g % 2; every lane of token g gets it.
  const int g = lane >> 2;
  return __shfl_sync(kFullMask, (g & 1) ? gram[1] : gram[0], 4 * g + (g >> 1));
}

// The group's squared norm of the rotated y, which is 128 x that of the input x (H_128 S has
// orthogonal +-1 rows): with kGram from the Gram diagonal rotate_mma() returns (the tensor cores
// do the squares instead of 32 FFMAs and a shuffle tree per lane and vector; with the unset rows
// above, r201: the 32k-token f16 append 89.5 -> 86.6 us, bf16 89.4 -> 87.3), else, or where the
// sum may have left float's normal range (group_norm2()'s rule, e.g. bf16 inputs near 1e+-30),
// from y.
template <InputKind kInput, bool kGram>
__device__ __forceinline__ double mma_norm2(float gram, const float (&y)[kLaneCoords]) {
  if constexpr (kGram) {
    const float sum = gram * static_cast<float>(kMmaHeadDim);
    if (__all_sync(kFullMask, sum >= 0x1p-80f && sum <= 3.0e38f)) return sum;
  }
  // With kGram y lacks the length-4 butterflies (rotate_mma), each of which doubles a pair's
  // squared norm.
  return (kGram ? 2.0 : 1.0) * group_norm2(y, kMmaHeadDim / kLaneCoords);
}

// kKeyBits, kValueBits: the formats' bits, compiled in for the built pairs (one path each: fewer
// instructions to fetch and registers); 0 for the formats' bits at run time.
template <InputKind kInput, int kKeyBits, int kValueBits, bool kSidesApart>
__global__ void __launch_bounds__(kMmaWarps * 32, kMmaBlocksPerSm) append_mma_kernel(const AppendLaunch a, double sqrt_head_dim) {
  static_assert((kKeyBits == 0) == (kValueBits == 0), "both formats compiled in, or neither");
  // The norm from the Gram matrix (f16/bf16 inputs), except in tq3's looping kernels: there its
  // registers spilled 8 B.
  constexpr bool kGram = kInput != InputKind::f32 && (kSidesApart || kKeyBits != 3);
  __shared__ SharedCodebooks books;
  __shared__ uint4 fragments[kMmaInner * 32];
  const CacheView& cache = a.cache;
  wait_for_previous_grid();  // a programmatic dependent: the kernel before writes the inputs
  allow_next_grid();         // the counter commit may be scheduled; it waits for this grid
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int kv_head = blockIdx.y;
  const int tile_stride = gridDim.x * kMmaWarps;
  // Whether tile i holds tokens of the chunk: from the launch's token count, not a tile count held
  // in a register across the loop (it spilled 4 bytes, r210).
  const auto has_tile = [&](int i) { return i * kMmaTokens < a.n_tokens; };
  const int64_t tokens_before = cache.tokens[a.seq_begin + blockIdx.z];
  // The input row of `token`, clamped to the chunk (load_mma_row).
  const auto input_row = [&](int token) {
    token = min(token, a.n_tokens - 1);
    return ((static_cast<std::size_t>(blockIdx.z) * a.n_tokens + token) * cache.kv_heads + kv_head) * kMmaHeadDim;
  };
  const bool vector_loads = ((reinterpret_cast<uintptr_t>(a.k) | reinterpret_cast<uintptr_t>(a.v)) & 15) == 0;
  // kSidesApart (a short chunk, e.g. a decode step's token; the launcher gives every tile two warps):
  // an even warp takes a tile's keys and the odd warp after it the same tile's values, so that the
  // two encodes run side by side. Otherwise each warp takes keys and values of its tiles
  // (warp-uniform: tile, tile + tile_stride, ...). Its own kernel: the loop's kernels spilled with
  // this path beside them.
  const int warp = static_cast<int>(threadIdx.x >> 5);
  const int side = kSidesApart ? warp & 1 : 0;  // 1: this warp encodes values only
  int tile = kSidesApart ? blockIdx.x * (kMmaWarps / 2) + (warp >> 1) : blockIdx.x * kMmaWarps + warp;
  int token = tile * kMmaTokens + g;
  // The first inputs' loads go out before the block stages its tables.
  uint32_t p[kRowWords<kInput>];
  load_mma_row<kInput>(side ? a.v : a.k, input_row(token), t, vector_loads, p);
  stage_codebooks<grid_pairs(kInput, kValueBits)>(a, books);
  const uint32_t* signs = head_signs(cache, kv_head);
  for (int i = threadIdx.x; i < kMmaInner * 32; i += kMmaWarps * 32)
    fragments[i] = rotation_fragments<kMmaF16<kInput>>(signs, i >> 5, lane);
  __syncthreads();  // the only block barrier: the rest is per warp

  LaneVector v;
  v.lanes = kMmaHeadDim / kLaneCoords;
  v.group_lane = t;
  v.count = kLaneCoords;
  v.sqrt_d = sqrt_head_dim;
  v.inv_scale_divisor = 1.0 / (sqrt_head_dim * sqrt(static_cast<double>(kMmaHeadDim)));
  static_assert(kMmaHeadDim == 1 << 7, "the block factor below");
  v.coordinate_unit = block_factor_of(7);  // float(1 / sqrt(128)), the CPU's block factor
  const unsigned group_bits = 0xfu << (4 * g);
  // The job of the key (which 0) or value (1) of `token`. With the formats compiled in, the row's
  // bytes are too (head_dim 128: 16 x bits, no padding), which drops encode_lane()'s checks of the
  // lane's words against the row's end and its padding loop.
  const auto job_of = [&](int which, int token) {
    // Looping kernels with 8-bit keys reload the token count, a load per tile: their second code
    // search (codes_follow_stored_scale) keeps the keys' 32 coordinates live through the first,
    // and a k8v4 kernel spilled it (8 bytes on sm_90a, 24 on sm_80; stored once, loaded per tile).
    constexpr bool kReloadTokens = !kSidesApart && codes_follow_stored_scale(kKeyBits);
    VectorJob job = vector_job(a, which, token, kReloadTokens ? cache.tokens[a.seq_begin + blockIdx.z] : tokens_before,
                               kLaneCoords * t, kLaneCoords, group_bits);
    if constexpr (kKeyBits != 0) job.row_bytes = kMmaHeadDim / 8 * (which ? kValueBits : kKeyBits);
    return job;
  };
  if constexpr (kSidesApart) {
    if (!has_tile(tile)) return;
    float y[kLaneCoords];
    const double norm2 = mma_norm2<kInput, kGram>(rotate_mma<kInput, kGram>(p, fragments, lane, y), y);
    const VectorJob job = job_of(side, token);
    if constexpr (kKeyBits == kValueBits) {
      encode_rotated<kInput, kKeyBits, kGram>(y, norm2, v, side ? cache.format.value : cache.format.key, job, books, a);
    } else if (side) {
      encode_rotated<kInput, kValueBits, kGram>(y, norm2, v, cache.format.value, job, books, a);
    } else {
      encode_rotated<kInput, kKeyBits, kGram>(y, norm2, v, cache.format.key, job, books, a);
    }
  } else {
#pragma unroll 1
    for (; has_tile(tile); tile += tile_stride) {
      float y[kLaneCoords];
      const float key_gram = rotate_mma<kInput, kGram>(p, fragments, lane, y);
      load_mma_row<kInput>(a.v, input_row(token), t, vector_loads, p);  // the values, while the keys encode
      encode_rotated<kInput, kKeyBits, kGram>(y, mma_norm2<kInput, kGram>(key_gram, y), v, cache.format.key,
                                              job_of(0, token), books, a);
      const float value_gram = rotate_mma<kInput, kGram>(p, fragments, lane, y);
      const VectorJob values = job_of(1, token);
      // The next tile's keys, while these values encode.
      const int next = tile + tile_stride;
      token = next * kMmaTokens + g;
      load_mma_row<kInput>(a.k, input_row(token), t, vector_loads, p);
      encode_rotated<kInput, kValueBits, kGram>(y, mma_norm2<kInput, kGram>(value_gram, y), v, cache.format.value,
                                                values, books, a);
    }
  }
}

// Advances the counters after the rows are written (stream order), so that a graph replay
// appends at the position left by the previous replay. A contiguous cache saturates at capacity
// and records the overflow rather than exposing positions it never stored. A thread per sequence.
// Launched as a programmatic dependent of the append kernel (sm_90 code): its blocks may start
// once every append block has passed its own wait for the kernel before (which may be the previous
// commit), so the counters are final then (the append only reads them). It reads them from L2
// before its wait, which it needs only before it writes. The next kernel (a decode) may start
// likewise.
__global__ void commit_tokens_kernel(const AppendLaunch a) {
  const int s = blockIdx.x * blockDim.x + threadIdx.x;
  int64_t* tokens = writable(a.cache.tokens);
  const int64_t before = s < a.n_seqs ? __ldcg(tokens + a.seq_begin + s) : 0;
  wait_for_previous_grid();
  allow_next_grid();
  if (s >= a.n_seqs) return;
  int64_t after = before + a.n_tokens;
  if (!a.cache.ring && after > a.cache.capacity) {
    record_failure(a.status, kAppendOverflow, a.seq_begin + s, after, -1, 0);
    after = a.cache.capacity;
  }
  tokens[a.seq_begin + s] = after;
}

// Launches one append kernel (threads per block, no dynamic shared memory) as a programmatic
// dependent of the previous kernel on the stream (programmatic_launch.cuh): its blocks wait for
// that kernel, which writes the inputs (and a commit the counters), before they read anything.
template <auto Kernel>
cudaError_t launch_append_kernel(const AppendLaunch& a, dim3 grid, int threads, double sqrt_d, cudaStream_t stream) {
  static KernelSetup setup;
  return launch_programmatic(Kernel, grid, dim3(threads), 0, stream, setup, a, sqrt_d);
}

// The quantized pairs of decode_pairs.hpp's default build have their own kernels; other pairs
// share one that switches on the formats (f16 and bf16 inputs only: with f32's three parts it
// spills, so f32 inputs of those pairs take the butterfly encoder).
template <int kKeyBits, int kValueBits, bool kSidesApart>
cudaError_t launch_mma(const AppendLaunch& a, dim3 grid, double sqrt_d, cudaStream_t stream) {
  constexpr int kThreads = kMmaWarps * 32;
  constexpr int kb = kKeyBits, vb = kValueBits;
  if (a.input == InputKind::f16)
    return launch_append_kernel<append_mma_kernel<InputKind::f16, kb, vb, kSidesApart>>(a, grid, kThreads, sqrt_d, stream);
  if (a.input == InputKind::bf16)
    return launch_append_kernel<append_mma_kernel<InputKind::bf16, kb, vb, kSidesApart>>(a, grid, kThreads, sqrt_d, stream);
  if constexpr (kKeyBits != 0)
    return launch_append_kernel<append_mma_kernel<InputKind::f32, kb, vb, kSidesApart>>(a, grid, kThreads, sqrt_d, stream);
  return cudaErrorInvalidValue;  // unreachable: use_tensor_core_rotation() sends f32 of other pairs to the butterflies
}
template <int kKeyBits, int kValueBits>
cudaError_t launch_mma(const AppendLaunch& a, dim3 grid, bool sides_apart, double sqrt_d, cudaStream_t stream) {
  return sides_apart ? launch_mma<kKeyBits, kValueBits, true>(a, grid, sqrt_d, stream)
                     : launch_mma<kKeyBits, kValueBits, false>(a, grid, sqrt_d, stream);
}

// (key bits, value bits) of the pairs with their own kernels.
inline constexpr int kOwnMmaPairs[][2] = {{4, 4}, {3, 3}, {2, 2}, {8, 8}, {8, 4}};

// Index of a's pair in kOwnMmaPairs, or -1.
int own_mma_pair(const AppendLaunch& a) {
  const int kb = bits_of(a.cache.format.key), vb = bits_of(a.cache.format.value);
  for (int i = 0; i < static_cast<int>(std::size(kOwnMmaPairs)); ++i)
    if (kOwnMmaPairs[i][0] == kb && kOwnMmaPairs[i][1] == vb) return i;
  return -1;
}

bool use_tensor_core_rotation(const AppendLaunch& a) {
  return a.cache.head_dim == kMmaHeadDim && quantized(a.cache.format.key) && quantized(a.cache.format.value) &&
         (a.input != InputKind::f32 || own_mma_pair(a) >= 0);
}

cudaError_t launch_mma_for_pair(const AppendLaunch& a, dim3 grid, bool sides_apart, double sqrt_d, cudaStream_t stream) {
  constexpr auto& P = kOwnMmaPairs;
  static_assert(std::size(kOwnMmaPairs) == 5, "a case per pair");
  switch (own_mma_pair(a)) {
    case 0: return launch_mma<P[0][0], P[0][1]>(a, grid, sides_apart, sqrt_d, stream);
    case 1: return launch_mma<P[1][0], P[1][1]>(a, grid, sides_apart, sqrt_d, stream);
    case 2: return launch_mma<P[2][0], P[2][1]>(a, grid, sides_apart, sqrt_d, stream);
    case 3: return launch_mma<P[3][0], P[3][1]>(a, grid, sides_apart, sqrt_d, stream);
    case 4: return launch_mma<P[4][0], P[4][1]>(a, grid, sides_apart, sqrt_d, stream);
    default: return launch_mma<0, 0>(a, grid, sides_apart, sqrt_d, stream);
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

namespace {
// Blocks per (KV head, sequence) pair in about one wave of the tensor-core append.
cudaError_t mma_blocks_per_pair(int kv_heads, int n_seqs, int* blocks) {
  int sms = 0;
  const cudaError_t err = current_sm_count(&sms);
  *blocks = std::max(1, sms * kMmaBlocksPerSm / (kv_heads * n_seqs));
  return err;
}

// The longest chunk whose tiles all get two warps (kSidesApart) in `per_pair` blocks per pair.
constexpr int sides_apart_tokens(int per_pair) { return per_pair * (kMmaWarps / 2) * kMmaTokens; }
}  // namespace

cudaError_t append_sides_apart_max_tokens(int kv_heads, int n_seqs, int* tokens) {
  int per_pair = 0;
  const cudaError_t err = mma_blocks_per_pair(kv_heads, n_seqs, &per_pair);
  *tokens = sides_apart_tokens(per_pair);
  return err;
}

cudaError_t launch_append(const AppendLaunch& a, cudaStream_t stream) {
  const double sqrt_d = std::sqrt(static_cast<double>(a.cache.head_dim));
  cudaError_t err = cudaSuccess;
  if (use_tensor_core_rotation(a)) {
    // About one wave of blocks over all (KV head, sequence) pairs; each warp loops over tiles, or
    // (kSidesApart) two warps take each tile when that fits the wave.
    int per_pair = 0;
    err = mma_blocks_per_pair(a.cache.kv_heads, a.n_seqs, &per_pair);
    if (err != cudaSuccess) return err;
    const int tiles = (a.n_tokens + kMmaTokens - 1) / kMmaTokens;
    const int one_tile_each = (tiles + kMmaWarps - 1) / kMmaWarps;
    const int two_warps_each = (tiles + kMmaWarps / 2 - 1) / (kMmaWarps / 2);
    const bool sides_apart = a.n_tokens <= sides_apart_tokens(per_pair);  // two_warps_each <= per_pair
    const dim3 grid(sides_apart ? two_warps_each : std::min(one_tile_each, per_pair), a.cache.kv_heads, a.n_seqs);
    err = launch_mma_for_pair(a, grid, sides_apart, sqrt_d, stream);
  } else {
    const int tokens_per_block = kAppendWarps * 32 / lanes_per_vector(a.cache.head_dim);
    const dim3 grid((a.n_tokens + tokens_per_block - 1) / tokens_per_block, a.cache.kv_heads, a.n_seqs);
    constexpr int kThreads = kAppendWarps * 32;
    switch (a.input) {
      case InputKind::f32: err = launch_append_kernel<append_kernel<InputKind::f32>>(a, grid, kThreads, sqrt_d, stream); break;
      case InputKind::f16: err = launch_append_kernel<append_kernel<InputKind::f16>>(a, grid, kThreads, sqrt_d, stream); break;
      default: err = launch_append_kernel<append_kernel<InputKind::bf16>>(a, grid, kThreads, sqrt_d, stream); break;
    }
  }
  if (err != cudaSuccess) return err;
  static KernelSetup commit_setup;
  constexpr int kCommitThreads = 128;
  return launch_programmatic(commit_tokens_kernel, dim3((a.n_seqs + kCommitThreads - 1) / kCommitThreads),
                             dim3(kCommitThreads), 0, stream, commit_setup, a);
}

}  // namespace tqkv::cuda_detail
