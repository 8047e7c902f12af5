// The fast CPU backend (Highway SIMD with runtime dispatch + OpenMP threads), as api/ sees it.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "tqkv/attention.hpp"
#include "tqkv/layout.hpp"
#include "tqkv/quantize.hpp"

namespace tqkv::cpu_fast {

// Same semantics as decode_attention_reference; host memory. threads = 0: all.
void decode_attention(const CacheView& cache, const float* q, void* out, const DecodeParams& params,
                      int threads);

// Encodes n vectors x[i * x_stride .. + head_dim) into rows[i * row_stride] and scales[i].*side; the
// same bytes as core's encode_vector (documented tie-breaking differences aside).
void encode_vectors(const VectorCodec& codec, int head_dim, const float* x, std::size_t x_stride,
                    int n, uint8_t* rows, std::size_t row_stride, ScalePair* scales, ScaleSide side);

// Instruction-set targets this machine can run (e.g. "AVX2", "SSE4", "EMU128"), best first,
// and the one in use.
std::vector<std::string> available_targets();
std::string active_target();
// Restricts dispatch to one target by name (tests force each); "" restores the best.
void force_target(const std::string& name);

}  // namespace tqkv::cpu_fast
