// Device helpers shared by the CUDA kernels: packed-format traits, chunk decoding, the block-
// diagonal Walsh–Hadamard transform in shared memory, cp.async wrappers, output conversion.
// Device code only; no framework includes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include "tqkv/attention.hpp"
#include "tqkv/format.hpp"
#include "tqkv/layout.hpp"

namespace tqkv::cuda_detail {

// ---- Packed formats at compile time (mirror format.cpp; the host launcher checks they agree
// with row_bytes() of the cache it is given, so a drift fails loudly instead of misreading). ----

constexpr int bits_of(Format f) {
  return f == Format::f16 ? 16 : f == Format::tq2 ? 2 : f == Format::tq3 ? 3 : f == Format::tq4 ? 4 : 8;
}
constexpr bool quantized(Format f) { return f != Format::f16; }
constexpr int row_bytes_of(Format f, int head_dim) {
  return (head_dim * bits_of(f) / 8 + 15) / 16 * 16;
}

// Kernels decode 8 coordinates at a time: 8 codes of b bits are exactly b bytes, so a chunk never
// straddles a byte and the 3-bit word (8 codes in 3 bytes) is one chunk.
inline constexpr int kChunkCoords = 8;
constexpr int chunk_bytes(Format f) { return bits_of(f); }

// Decodes the chunk at `p` (shared memory, aligned to its chunk size except tq3) into 8 floats.
// tq formats return codebook levels (the scale is applied by the caller); f16 the stored values.
template <Format F>
__device__ __forceinline__ void decode_chunk(const uint8_t* p, const float* levels, float (&v)[8]) {
  if constexpr (F == Format::tq2) {
    const uint32_t w = *reinterpret_cast<const uint16_t*>(p);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = levels[(w >> (2 * i)) & 3u];
  } else if constexpr (F == Format::tq3) {
    // Little-endian 24-bit word, code i at bits [3i, 3i+3). Byte loads: chunks sit at 3-byte offsets.
    const uint32_t w = uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = levels[(w >> (3 * i)) & 7u];
  } else if constexpr (F == Format::tq4) {
    const uint32_t w = *reinterpret_cast<const uint32_t*>(p);  // low nibble = even coordinate
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = levels[(w >> (4 * i)) & 15u];
  } else if constexpr (F == Format::tq8) {
    const uint2 w = *reinterpret_cast<const uint2*>(p);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[i] = levels[(w.x >> (8 * i)) & 255u];
      v[4 + i] = levels[(w.y >> (8 * i)) & 255u];
    }
  } else {
    static_assert(F == Format::f16, "decode_chunk: unknown format");
    const uint4 w = *reinterpret_cast<const uint4*>(p);
    const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const __half2 h = *reinterpret_cast<const __half2*>(&words[i]);
      const float2 f = __half22float2(h);
      v[2 * i] = f.x;
      v[2 * i + 1] = f.y;
    }
  }
}

// ---- Block-diagonal Walsh–Hadamard transform (rotation.hpp) on vectors in shared memory ----

// Power-of-two blocks of head_dim, largest first: the set bits of head_dim from the top
// (hadamard_blocks(): 96 -> {64, 32}, 576 -> {512, 64}). Supported head dims are multiples of 16
// up to 1024, so bits 4..10 cover them.
inline constexpr int kLowestBlockBit = 4;
inline constexpr int kHighestBlockBit = 10;

// Block (offset, size) holding coordinate `i`; {0, 0} past the last block.
struct HadamardBlock {
  int offset, size;
};
constexpr HadamardBlock hadamard_block(int head_dim, int i) {
  int offset = 0;
  for (int bit = kHighestBlockBit; bit >= kLowestBlockBit; --bit) {
    if (!(head_dim & (1 << bit))) continue;
    const int block = 1 << bit;
    if (i < offset + block) return {offset, block};
    offset += block;
  }
  return {0, 0};
}
__device__ __forceinline__ void hadamard_block_of(int head_dim, int i, int& offset, int& size) {
  const HadamardBlock blk = hadamard_block(head_dim, i);
  offset = blk.offset;
  size = blk.size;
}

// In-place unnormalised FWHT of each block of `n_vec` vectors x[v * stride + i], i < head_dim,
// stages of growing butterfly length (len = 1, 2, 4, ...) as fwht_unnormalized() on the CPU does.
// Every thread of the block must call it; it synchronises before and after.
__device__ inline void block_fwht_unnormalized(float* x, int n_vec, int stride, int head_dim) {
  __syncthreads();
  const int half = head_dim / 2;
  for (int len = 1; len < head_dim; len <<= 1) {
    for (int t = threadIdx.x; t < n_vec * half; t += blockDim.x) {
      const int vec = t / half;
      const int pair = t - vec * half;
      int offset, size;
      hadamard_block_of(head_dim, 2 * pair, offset, size);  // blocks hold size/2 pairs each
      if (len >= size) continue;
      const int q = pair - offset / 2;
      const int i = offset + (q / len) * 2 * len + (q % len);
      float* row = x + vec * stride;
      const float a = row[i], b = row[i + len];
      row[i] = a + b;
      row[i + len] = a - b;
    }
    __syncthreads();
  }
}

__device__ __forceinline__ bool sign_negated(const uint32_t* sign_bits, int i) {
  return (sign_bits[i >> 5] >> (i & 31)) & 1u;
}

// 1/sqrt(block size) of the block holding coordinate i (the orthonormal Hadamard's factor).
__device__ __forceinline__ float hadamard_norm(int head_dim, int i) {
  int offset, size;
  hadamard_block_of(head_dim, i, offset, size);
  return rsqrtf(static_cast<float>(size));
}

template <int N, typename F>
__device__ __forceinline__ void static_for(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    (f(std::integral_constant<int, I>{}), ...);
  }(std::make_integer_sequence<int, N>{});
}

// ---- The same transform on one vector held by a warp: no shared memory, no barrier ----

// Coordinates per lane of a D-vector spread over a warp: lane l holds l + 32 j in x[j].
template <int D>
inline constexpr int kWarpSlots = (D + 31) / 32;

// Unnormalised block-diagonal FWHT of the warp's vector. Each butterfly computes a + b and a - b
// of the same operands in the same stage order as block_fwht_unnormalized() and the CPU, so the
// results are bit-identical. Blocks of 32 or more coordinates are 32-aligned (one block per
// slot j); a 16-block (head dims = 16 mod 32) is lanes 0-15 of the last slot, whose lanes 16-31
// hold no coordinate and only pair among themselves. All lanes must call it.
template <int D>
__device__ __forceinline__ void warp_fwht_unnormalized(float (&x)[kWarpSlots<D>]) {
  constexpr int NJ = kWarpSlots<D>;
  const int lane = threadIdx.x & 31;
  static_for<5>([&](auto L) {  // len = 1..16: partners in other lanes
    constexpr int len = 1 << decltype(L)::value;
    static_for<NJ>([&](auto J) {
      constexpr int j = decltype(J)::value;
      if constexpr (len < hadamard_block(D, 32 * j).size) {
        const float other = __shfl_xor_sync(0xffffffffu, x[j], len);
        x[j] = (lane & len) ? other - x[j] : x[j] + other;
      }
    });
  });
  static_for<6>([&](auto L) {  // len = 32..1024: partners in other slots of the same lane
    constexpr int len = 32 << decltype(L)::value, dj = len / 32;
    static_for<NJ>([&](auto J) {
      constexpr int j = decltype(J)::value;
      if constexpr ((j & dj) == 0 && len < hadamard_block(D, 32 * j).size) {
        const float a = x[j], b = x[j + dj];
        x[j] = a + b;
        x[j + dj] = a - b;
      }
    });
  });
}

// hadamard_norm() of the coordinates in slot j.
template <int D>
__device__ __forceinline__ float warp_hadamard_norm(int j) {
  return rsqrtf(static_cast<float>(hadamard_block(D, 32 * j).size));
}

// ---- cp.async (sm_80+): global -> shared copies that do not occupy registers ----

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ---- Output ----

__device__ __forceinline__ void store_output(void* out, std::size_t index, float value,
                                             OutputType type) {
  switch (type) {
    case OutputType::f32: static_cast<float*>(out)[index] = value; break;
    case OutputType::f16: static_cast<__half*>(out)[index] = __float2half_rn(value); break;
    case OutputType::bf16: static_cast<__nv_bfloat16*>(out)[index] = __float2bfloat16_rn(value); break;
  }
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

}  // namespace tqkv::cuda_detail
