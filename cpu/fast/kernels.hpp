// Internal interface between the target-independent driver (fast.cpp) and the Highway kernels
// compiled once per instruction set (kernels.cpp). Not part of the public API.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tqkv/layout.hpp"
#include "tqkv/quantize.hpp"

namespace tqkv::cpu_fast::detail {

// Positions decoded per block: big enough to amortise the softmax bookkeeping, small enough that
// the decoded K and V blocks (2 * 16 * head_dim floats: 16 KiB at d = 128) stay in L1.
inline constexpr int kBlockPositions = 16;

// A 16-entry codebook split into four byte planes (byte k of each level as a float), so that a
// 16-byte table lookup (pshufb / TableLookupBytes) per plane turns 16 codes into 16 floats.
// Codebooks with fewer levels (tq2, tq3) are zero-padded. Unused for f16 and tq8.
struct BytePlanes {
  alignas(16) uint8_t plane[4][16] = {};
};
BytePlanes make_byte_planes(const float* levels, int n_levels);

// One work item: the query group of one KV head of one sequence over the absolute positions
// [begin, end), all of them visible and held. Produces the unnormalised online-softmax state of
// each query head of the group: o[g][head_dim] (accumulation domain: rotated for tq values),
// m[g] (running max logit), l[g] (sum of exp(logit - m)). An empty range gives o = 0, m = -inf,
// l = 0.
struct AttendItem {
  const CacheView* cache = nullptr;
  int b = 0;
  int kv_head = 0;
  int group = 0;  // query heads per KV head
  int64_t begin = 0, end = 0;
  const float* q = nullptr;  // [group][head_dim], in the key domain, logit scale folded in
  float softcap = 0.0f;
  const BytePlanes* k_planes = nullptr;
  const BytePlanes* v_planes = nullptr;
  float* o = nullptr;
  float* m = nullptr;
  float* l = nullptr;
};

// Runs one item on the dispatched instruction set. Thread-safe (per-thread scratch).
void attend(const AttendItem& item);

// Encodes n vectors with the dispatched instruction set (see cpu_fast::encode_vectors).
void encode(const VectorCodec& codec, int head_dim, const float* x, std::size_t x_stride, int n,
            uint8_t* rows, std::size_t row_stride, ScalePair* scales, ScaleSide side);

std::string dispatched_target_name();
std::vector<std::string> compiled_and_supported_targets();
// 0 restores the CPU's own list; otherwise the Highway target bit to run.
void force_target_bits(int64_t bits);
int64_t target_bits_by_name(const std::string& name);

}  // namespace tqkv::cpu_fast::detail
