// merge_attention_states on the GPU: one block per row (one query head of one sequence), each
// thread a strided share of its head_dim values. Memory-bound and small next to a decode step; as
// a programmatic dependent launch (sm_90) its blocks start while the decode before it finishes.
#include "device_common.cuh"
#include "launch.hpp"
#include "programmatic_launch.cuh"

namespace tqkv::cuda_detail {
namespace {

constexpr int kMergeThreads = 128;

__global__ void __launch_bounds__(kMergeThreads) merge_states_kernel(const MergeStatesLaunch a) {
  const int row = blockIdx.x;
  wait_for_previous_grid();  // the inputs may be the previous kernel's outputs
  const float la = a.lse_a[row], lb = a.lse_b[row];
  const float m = fmaxf(la, lb);
  // A side at -inf weighs exactly 0 and its values are not read (they may be anything).
  const float wa = la == -INFINITY ? 0.0f : expf(la - m), wb = lb == -INFINITY ? 0.0f : expf(lb - m);
  const float den = wa + wb;
  const float inv = den > 0.0f ? 1.0f / den : 0.0f;
  const std::size_t base = static_cast<std::size_t>(row) * a.head_dim;
  for (int i = threadIdx.x; i < a.head_dim; i += kMergeThreads) {
    float v = 0.0f;
    if (wa > 0.0f) v += wa * load_output(a.out_a, base + i, a.type);
    if (wb > 0.0f) v += wb * load_output(a.out_b, base + i, a.type);
    store_output(a.out, base + i, v * inv, a.type);
  }
  if (a.lse == nullptr) return;
  __syncthreads();  // lse may be lse_a or lse_b: every thread has read the row's inputs
  if (threadIdx.x == 0) a.lse[row] = den > 0.0f ? m + logf(den) : -INFINITY;
}

}  // namespace

cudaError_t launch_merge_states(const MergeStatesLaunch& launch, cudaStream_t stream) {
  if (launch.rows == 0) return cudaSuccess;
  static KernelSetup setup;
  return launch_programmatic(merge_states_kernel, dim3(launch.rows), dim3(kMergeThreads), 0, stream, setup, launch);
}

}  // namespace tqkv::cuda_detail
