// The card's read bandwidth for bench_cuda: a kernel that only reads (16-byte loads), the
// reference a read-only decode step is measured against.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

namespace tqkv::bench {

// Reads `bytes` (a multiple of 16) at `data` once, on `stream`; `sink` (one device unsigned) keeps
// the loads alive. Returns the launch status.
cudaError_t launch_read_all(const void* data, std::size_t bytes, unsigned* sink, cudaStream_t stream);

}  // namespace tqkv::bench
