// A kernel that writes the token counters late (late_counts.cu): a decode launched behind it
// starts early (programmatic launch) and reads the old counts before its griddepcontrol.wait.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace tqkv::test {

inline constexpr int kMaxLateCounts = 8;
struct LateCounts {
  int64_t values[kMaxLateCounts];
  int n;
};

// On `stream`: lets the next kernel start its blocks at once, waits delay_ns, then writes
// counts.values[0, n) to tokens[0, n); *written_at (device) gets %globaltimer just before the
// stores. Without programmatic launch (before sm_90) the next kernel starts after it as usual.
cudaError_t write_counts_late(int64_t* tokens, const LateCounts& counts, unsigned long long delay_ns,
                              unsigned long long* written_at, cudaStream_t stream);

// Whether a kernel launched as a programmatic dependent starts before the kernel ahead of it ends
// here: not before sm_90, and not under compute-sanitizer, which runs kernels one after another.
cudaError_t programmatic_launch_overlaps(bool* overlaps);

}  // namespace tqkv::test
