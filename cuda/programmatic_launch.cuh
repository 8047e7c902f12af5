// Kernel launches as programmatic dependents (sm_90): a kernel so launched may start its blocks while
// the previous kernel on the stream finishes; its code waits (device_common.cuh:
// wait_for_previous_grid) before it touches anything that kernel writes.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <utility>

namespace tqkv::cuda_detail {

// Per device and kernel, once: the opt-in to more than 48 KB of dynamic shared memory, and whether
// the kernel may be launched as a programmatic dependent. Only code built for sm_90 or later
// (ptxVersion >= 90) carries the wait for the previous kernel; older code, also when JIT-compiled
// for a newer card, has none and so must not start early.
struct KernelSetup {
  std::atomic<uint64_t> done{0}, programmatic{0};  // bit per device
};

// Whether a block of `bytes` of dynamic shared memory fits the current device (its opt-in limit,
// read once per device; false without a device).
inline bool block_smem_fits_current_device(int bytes) {
  static std::atomic<int> optin[64];  // per device & 63; 0 = not read yet
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  int limit = optin[device & 63].load(std::memory_order_relaxed);
  if (limit == 0) {
    if (cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) return false;
    optin[device & 63].store(limit, std::memory_order_relaxed);
  }
  return bytes <= limit;
}
template <typename Kernel>
cudaError_t prepare_kernel(Kernel kernel, int smem_bytes, KernelSetup& setup, bool* programmatic = nullptr) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = uint64_t{1} << (device & 63);
  if (!(setup.done.load(std::memory_order_acquire) & bit)) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
    if (err != cudaSuccess) return err;
    cudaFuncAttributes attr{};
    err = cudaFuncGetAttributes(&attr, kernel);
    if (err != cudaSuccess) return err;
    if (attr.ptxVersion >= 90) setup.programmatic.fetch_or(bit, std::memory_order_relaxed);
    setup.done.fetch_or(bit, std::memory_order_release);
  }
  if (programmatic != nullptr) *programmatic = (setup.programmatic.load(std::memory_order_relaxed) & bit) != 0;
  return cudaSuccess;
}

// Launches kernel<<<grid, block, smem_bytes, stream>>>(args...), as a programmatic dependent of the
// previous kernel on the stream where its code allows (prepare_kernel).
template <typename... Params, typename... Args>
cudaError_t launch_programmatic(void (*kernel)(Params...), dim3 grid, dim3 block, int smem_bytes, cudaStream_t stream,
                                KernelSetup& setup, Args&&... args) {
  bool programmatic = false;
  const cudaError_t err = prepare_kernel(kernel, smem_bytes, setup, &programmatic);
  if (err != cudaSuccess) return err;
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  config.attrs = &attr;
  config.numAttrs = programmatic ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace tqkv::cuda_detail
