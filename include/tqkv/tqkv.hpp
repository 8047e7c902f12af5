// tqkv: a KV cache compressed with TurboQuant, and decode attention computed on the compressed
// bytes. This umbrella header pulls in the whole public C++ API.
//
//   tqkv::KvCache cache({.batch = 1, .kv_heads = 8, .head_dim = 128, .capacity = 4096,
//                        .format = tqkv::parse_kv_format("k8v4")});
//   cache.append(0, k, v, n_tokens);                 // quantize on write
//   tqkv::decode_attention(cache.view(), q, out, {.q_heads = 32});
#pragma once

#include <string>
#include <vector>

#include "tqkv/attention.hpp"
#include "tqkv/cache.hpp"
#include "tqkv/codebook.hpp"
#include "tqkv/error.hpp"
#include "tqkv/format.hpp"
#include "tqkv/layout.hpp"
#include "tqkv/quantize.hpp"
#include "tqkv/rotation.hpp"

namespace tqkv {

// "0.1.0"
const char* version() noexcept;

// Backends compiled into this build, e.g. {"cpu_reference", "cpu", "cuda"}.
std::vector<std::string> built_backends();
// Whether a CUDA device can run the CUDA backend now (false when not built in or no GPU).
bool cuda_available() noexcept;
// The SIMD encoder of the fast CPU backend, for KvCache::set_encoder (same bytes as the scalar).
BatchEncoder fast_cpu_encoder() noexcept;

// One line each, for `tqkv info`: the CPU's model and the SIMD targets the fast path can use;
// the GPU (or why there is none).
std::string cpu_description();
std::string gpu_description();

}  // namespace tqkv
