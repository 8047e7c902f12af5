// Device helpers shared by the CUDA kernels: packed-format traits, the block-diagonal
// Walsh–Hadamard transform on a warp's registers, cp.async wrappers, output conversion.
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

// ---- Block-diagonal Walsh–Hadamard transform (rotation.hpp) ----

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

// The rotation's sign words of KV head kv_head (K and V share them).
__device__ __forceinline__ const uint32_t* head_signs(const CacheView& c, int kv_head) {
  return c.sign_bits + static_cast<std::size_t>(kv_head) * c.sign_words;
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
// of the same operands in the same stage order as fwht_unnormalized() on the CPU, so the results
// are bit-identical. Blocks of 32 or more coordinates are 32-aligned (one block per
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

// 1/sqrt(block size) for the coordinates in slot j (the orthonormal Hadamard's factor).
template <int D>
__device__ __forceinline__ float warp_hadamard_norm(int j) {
  return rsqrtf(static_cast<float>(hadamard_block(D, 32 * j).size));
}

// ---- cp.async (sm_80+): global -> shared copies that do not occupy registers; with valid =
// false the destination is zero-filled (no global read) ----

__device__ __forceinline__ void cp_async16_zfill(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}
// Unconditional copies (the caller knows the source row is valid).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async4_zfill(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// %globaltimer: wall-clock nanoseconds, comparable across SMs and kernels (timelines, waits).
__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Programmatic dependent launch (sm_90; no-ops before). A kernel launched with
// cudaLaunchAttributeProgrammaticStreamSerialization may start while the previous kernel on the
// stream finishes; wait_for_previous_grid() returns once that kernel has completed and its writes
// are visible, so nothing before it may read what a previous kernel writes or write what it
// reads. allow_next_grid() lets the next such kernel start its blocks early (they wait likewise).
__device__ __forceinline__ void wait_for_previous_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void allow_next_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ---- Split-K completion ----

// Called by every thread of a block after its share of the block's partial is stored; true (in
// every thread) for the last of `splits` blocks to count in at `counter`, which it resets to 0.
// The block barrier orders every thread's stores before thread 0's release (the release is
// cumulative), and thread 0's acquire plus the second barrier order the other blocks' partials
// before the last block's loads: one fence per block instead of one per thread.
__device__ inline bool count_split_done(unsigned* counter, int splits) {
  __shared__ int last;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned before;
    asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;" : "=r"(before) : "l"(counter) : "memory");
    last = before == static_cast<unsigned>(splits - 1);
    if (last) *counter = 0u;
  }
  __syncthreads();
  return last;
}

// ---- Output ----

__device__ __forceinline__ float load_output(const void* data, std::size_t index, OutputType type) {
  switch (type) {
    case OutputType::f32: return static_cast<const float*>(data)[index];
    case OutputType::f16: return __half2float(static_cast<const __half*>(data)[index]);
    case OutputType::bf16: return __bfloat162float(static_cast<const __nv_bfloat16*>(data)[index]);
  }
  return 0.0f;
}
__device__ __forceinline__ void store_output(void* out, std::size_t index, float value,
                                             OutputType type) {
  switch (type) {
    case OutputType::f32: static_cast<float*>(out)[index] = value; break;
    case OutputType::f16: static_cast<__half*>(out)[index] = __float2half_rn(value); break;
    case OutputType::bf16: static_cast<__nv_bfloat16*>(out)[index] = __float2bfloat16_rn(value); break;
  }
}

// 2^x by the special-function unit alone (ex2.approx.ftz: the same approximation exp2f uses,
// without its ~4 instructions of denormal handling; results below 2^-126 flush to 0, far below
// what a softmax weight can contribute). exp2(-inf) = 0.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
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
