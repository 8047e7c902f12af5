// A NaN pattern in every SM's shared memory before a kernel under test (stale_shared.cu).
#pragma once

#include <cuda_runtime_api.h>

namespace tqkv::test {

cudaError_t fill_shared_memory_with_nan();

}  // namespace tqkv::test
