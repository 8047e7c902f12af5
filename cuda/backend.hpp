// The CUDA backend as the api/ dispatcher sees it: plain C++, no CUDA headers.
// Implemented in cuda/*.cu; only compiled when the build has CUDA (TQKV_HAVE_CUDA).
#pragma once

#include <cstddef>
#include <string>

#include "tqkv/attention.hpp"
#include "tqkv/layout.hpp"

namespace tqkv::cuda_backend {

// Number of CUDA devices visible (0 when the driver or a GPU is missing; never throws).
int device_count() noexcept;
// True when p is device (or managed) memory.
bool is_device_pointer(const void* p) noexcept;
// One line naming the GPU (e.g. "NVIDIA H100 80GB HBM3, sm_90, 132 SMs"), or an empty string.
std::string device_description();

std::size_t decode_workspace_bytes(const CacheView& cache, const DecodeParams& params);
// cache, q, out, params.sinks and ctx.workspace all in device memory; runs on ctx.stream.
void decode_attention(const CacheView& cache, const float* q, void* out, const DecodeParams& params,
                      const ExecContext& ctx);
// All arrays in device memory; runs on ctx.stream.
void merge_attention_states(const void* out_a, const float* lse_a, const void* out_b, const float* lse_b,
                            void* out, float* lse, int rows, int head_dim, OutputType type,
                            const ExecContext& ctx);

}  // namespace tqkv::cuda_backend
