// A small GGUF writer for tests: builds files in memory (metadata, tensors in F32, F16, Q4_0,
// Q4_1, Q8_0) so that the reader and the forward pass can be tested without the real model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gguf.hpp"

namespace tqkv::model::testing {

class GgufWriter {
 public:
  void add_u32(const std::string& key, uint32_t v);
  void add_i32(const std::string& key, int32_t v);
  void add_u64(const std::string& key, uint64_t v);
  void add_f32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  void add_string(const std::string& key, const std::string& v);
  void add_strings(const std::string& key, const std::vector<std::string>& v);
  void add_i32s(const std::string& key, const std::vector<int32_t>& v);
  // dims[0] is the row length. Quantized types encode `values` with ggml's rules.
  void add_tensor(const std::string& name, const std::vector<uint64_t>& dims, TensorType type,
                  const std::vector<float>& values);
  // A tensor whose data bytes are given as they are (for hand-made blocks).
  void add_raw_tensor(const std::string& name, const std::vector<uint64_t>& dims, TensorType type,
                      const std::vector<uint8_t>& data);

  std::vector<uint8_t> bytes(uint32_t alignment = 32) const;
  void write(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    std::vector<uint64_t> dims;
    TensorType type;
    std::vector<uint8_t> data;
  };
  std::vector<uint8_t> kv_;
  uint64_t kv_count_ = 0;
  std::vector<Tensor> tensors_;
};

// ggml-style encoders of one row (n a multiple of 32 for the block types).
std::vector<uint8_t> encode_tensor(TensorType type, const std::vector<float>& values);

// Writes a random-weight llama GGUF (byte-level vocabulary of 256 byte tokens + `extra_merges`
// merged tokens). Weight types alternate between F32, F16, Q8_0, Q4_0 and Q4_1.
struct TinyLlamaSpec {
  int n_layers = 2, n_embd = 128, n_head = 4, n_head_kv = 2, n_ff = 96;
  int n_rot = 32;
  float rope_base = 10000.0f;
  bool tied_output = true;
  uint64_t seed = 1234;
};
std::vector<uint8_t> tiny_llama_gguf(const TinyLlamaSpec& spec);

}  // namespace tqkv::model::testing
