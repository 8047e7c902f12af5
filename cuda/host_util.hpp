// Host-side helpers of the CUDA backend (plain C++ with the CUDA runtime API).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace tqkv::cuda_detail {

// Raises Error(backend_error) naming the call and CUDA's message when err is not cudaSuccess.
void check_cuda(cudaError_t err, std::string_view what);

// Raises Error(backend_unavailable) when no CUDA device is visible.
void require_device(std::string_view what);

// Raises Error(invalid_argument) naming `name` unless p is device (or managed) memory.
void require_device_pointer(const void* p, std::string_view what, std::string_view name);

// Whether p is a multiple of `bytes` (null counts as aligned: optional arrays check only when set).
inline bool is_aligned(const void* p, std::size_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

}  // namespace tqkv::cuda_detail
