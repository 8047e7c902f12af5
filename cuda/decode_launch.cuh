// Launchers of the decode kernel (decode_mma.cuh) of one format pair, for every built head dim.
#pragma once

#include "decode_common.cuh"
#include "decode_mma.cuh"
#include "launch.hpp"
#include "programmatic_launch.cuh"

namespace tqkv::cuda_detail {

// Whether a format pair and head dim has a PACKED_LO kernel (decode_mma_kernel), used for groups of
// at most 4 query heads: transposed scores (keys as the mma's rows, the query's hi and lo parts as
// its columns) and values with the weights' lo halves in columns 4-7; half the mmas of the other
// kernel and half its softmax work. Graph steps per decode step:
// - d <= 128 (r129/r130, 32/8 heads, against dd1cdb1, where only tq2/tq3 keys had this kernel, with
//   packed values but scores as for any group): tq3 -7 to -10 % at batch 8/32, tq2 -4 to -6 %,
//   k8v4 -5 % at batch 32 (steadier too), tq4 -1 to -2 %;
// - d = 256 (r132; 32/8, 16/8 and 32/32 heads, against the kernel for any group): tq2 -7 to -17 %,
//   tq4 -2 to -7 %; tq3 then mixed (-16 to +8 %), but r255 (the kernel of r254, 16/8, 32/8 and 32/32
//   heads, batch 1, 8 and 32, 1k-128k, 3x): tq3 median -4.5 % (-12 % to +0.4 %; loop 1072 -> 949);
// - where two warps share a tile (d = 512; tq8 keys from d = 256) they add up their partial scores
//   as in the other kernel, and the loop is 11-12 % shorter (SASS per tile: tq4 d = 512 1004 -> 884,
//   tq2 825 -> 723, tq3 1181 -> 1057, k8v4 d = 256 940 -> 817, d = 512 951 -> 827, tq8 d = 256
//   1126 -> 1007). Against the untransposed kernel, 32/8, 16/8 (d = 256) and 32/32 heads, batch 1
//   and 8, 1k-128k, alternated 3x, graph steps: r253, d = 512: tq4 median -11 % (every shape
//   faster; b8 16k 235.8 -> 208.6 us), tq2 -13 %; r254: k8v4 d = 256 -11 % (b8 64k 16/8 768.5 ->
//   692.4), d = 512 -6 %, tq3 d = 512 -7 %, tq8 d = 256 -8 %, d = 512 -9 % (of 120 shapes one
//   slower, tq8 d = 256 b1 1k 9.9 -> 10.2 us).
// Not tq8 values at d = 96 (ptxas spilled 8 B).
constexpr bool has_packed_lo(Format kf, Format vf, int d) {
  if (kf == Format::f16 || (vf == Format::tq8 && d == 96)) return false;
  return d <= 128 || d == 256 || d == 512;  // not 576 (not measured)
}

// One kernel instance: its function, threads and shared memory. TILES: tiles per loop iteration.
template <Format KF, Format VF, int D, bool PACKED_LO = false, int TILES = 1>
struct DecodeInstance {
  static constexpr int kWarps = 8;
  static constexpr int kStages = kTileGroupsInFlight * TILES;
  using Shape = MmaShape<KF, VF, D, kWarps, kStages>;
  static_assert(TILES == 1 || Shape::kSmemBytes <= kTwoBlocksSmemBytes || has_lone_tile_pairs(KF, VF, D, PACKED_LO),
                "tile pairs must keep two blocks per SM, unless the launcher gives them an SM alone");
  static constexpr int threads() { return kWarps * 32; }
  static constexpr int smem() { return Shape::kSmemBytes; }
  // Shared memory a launch of tile pairs reserves in a grid of at most one block per SM, so that
  // no second block fits beside it: then every graph step lands one block per SM. Pairs that fit
  // twice could land two to an SM in a step that starts while half the SMs are free (r179: tq3 b1
  // 128k with 16 splits, 26-30 SMs with two blocks, 72-75 instead of ~54 us per step).
  static constexpr int alone_smem() { return TILES > 1 ? cmax(smem(), kTwoBlocksSmemBytes + 128) : smem(); }
  static auto kernel() { return decode_mma_kernel<KF, VF, D, kWarps, kStages, PACKED_LO>; }
  static KernelSetup& setup() {
    static KernelSetup once;
    return once;
  }
  // The kernel's shared-memory limit: it covers alone_smem() where the device has it (tile pairs
  // alone on an SM need up to ~150 KB: an H100 or A100 has room, an sm_86/89 card not), whichever
  // launch comes first.
  static int limit_smem() {
    return TILES > 1 && block_smem_fits_current_device(alone_smem()) ? alone_smem() : smem();
  }
  // alone: reserve alone_smem() (where the device has it).
  static cudaError_t launch(const DecodeLaunch& a, cudaStream_t stream, bool alone = false) {
    int bytes = smem();
    if constexpr (TILES > 1) {
      const int limit = limit_smem();
      const cudaError_t err = prepare_kernel(kernel(), limit, setup());
      if (err != cudaSuccess) return err;
      if (alone) bytes = limit;
    }
    // Splits merge in-kernel (finish_decode_block). A programmatic dependent launch overlaps this
    // step's start with the previous kernel's end (r109: batch-1 graph steps 0.8-1.6 us shorter).
    return launch_programmatic(kernel(), dim3(a.splits, a.cache.kv_heads * a.head_chunks, a.cache.batch), dim3(threads()),
                               bytes, stream, setup(), a);
  }
  static cudaError_t blocks_per_sm(int* blocks) {
    cudaError_t err = prepare_kernel(kernel(), limit_smem(), setup());
    if (err != cudaSuccess) return err;
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, kernel(), threads(), smem());
  }
};

template <Format KF, Format VF, typename F>
cudaError_t with_decode_dim(int head_dim, F&& f) {
  switch (head_dim) {
    case 64: return f(DecodeInstance<KF, VF, 64>{});
    case 80: return f(DecodeInstance<KF, VF, 80>{});
    case 96: return f(DecodeInstance<KF, VF, 96>{});
    case 128: return f(DecodeInstance<KF, VF, 128>{});
    case 256: return f(DecodeInstance<KF, VF, 256>{});
    case 512: return f(DecodeInstance<KF, VF, 512>{});
    case 576: return f(DecodeInstance<KF, VF, 576>{});
    default: return cudaErrorInvalidValue;  // unreachable: the host checked decode_head_dim_built()
  }
}

// All head dims of one format pair (instantiated once per pair, in its own translation unit).
template <Format KF, Format VF>
cudaError_t launch_decode_pair(const DecodeLaunch& a, cudaStream_t stream) {
  return with_decode_dim<KF, VF>(a.cache.head_dim, [&](auto inst) {
    constexpr int D = decltype(inst)::Shape::kD;
    if constexpr (has_packed_lo(KF, VF, D)) {
      if (a.group <= 4) {
        // decode_tiles_per_iteration() decides (the tests ask it too); lone pairs come only with
        // one block per SM, so `alone` is then true.
        if constexpr (has_tile_pairs(KF, VF, D, true) || has_lone_tile_pairs(KF, VF, D, true)) {
          if (decode_tiles_per_iteration(a.cache.format, D, a.group, decode_reach(a.cache, a.window), a.splits,
                                         a.one_block_per_sm) == 2)
            return DecodeInstance<KF, VF, D, true, 2>::launch(a, stream, a.one_block_per_sm);
        }
        return DecodeInstance<KF, VF, D, true>::launch(a, stream);
      }
    }
    return decltype(inst)::launch(a, stream);
  });
}

// Whether this pair and head dim has tile pairs that prefer an SM alone in a grid of at most one
// block per SM (pairs_prefer_sm_alone), and the current device has the shared memory for that.
template <Format KF, Format VF>
bool decode_pairs_alone_pair(int head_dim) {
  bool fits = false;
  with_decode_dim<KF, VF>(head_dim, [&](auto inst) {
    constexpr int D = decltype(inst)::Shape::kD;
    if constexpr (pairs_prefer_sm_alone(KF, VF, D, has_packed_lo(KF, VF, D))) {
      using Pairs = DecodeInstance<KF, VF, D, true, 2>;
      fits = block_smem_fits_current_device(Pairs::alone_smem());
    }
    return cudaSuccess;
  });
  return fits;
}

template <Format KF, Format VF>
cudaError_t decode_blocks_per_sm_pair(int head_dim, int* blocks) {
  return with_decode_dim<KF, VF>(head_dim, [&](auto inst) { return decltype(inst)::blocks_per_sm(blocks); });
}

}  // namespace tqkv::cuda_detail
