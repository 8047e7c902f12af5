#include "gguf_writer.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <random>
#include <stdexcept>

#include <fmt/format.h>

#include "tqkv/format.hpp"

namespace tqkv::model::testing {
namespace {

template <typename T>
void put(std::vector<uint8_t>& out, T v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof(T));
}
void put_string(std::vector<uint8_t>& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}
void put_half(std::vector<uint8_t>& out, float v) { put<uint16_t>(out, float_to_half(v)); }

}  // namespace

void GgufWriter::add_u32(const std::string& key, uint32_t v) {
  put_string(kv_, key), put<uint32_t>(kv_, 4), put(kv_, v), ++kv_count_;
}
void GgufWriter::add_i32(const std::string& key, int32_t v) {
  put_string(kv_, key), put<uint32_t>(kv_, 5), put(kv_, v), ++kv_count_;
}
void GgufWriter::add_u64(const std::string& key, uint64_t v) {
  put_string(kv_, key), put<uint32_t>(kv_, 10), put(kv_, v), ++kv_count_;
}
void GgufWriter::add_f32(const std::string& key, float v) {
  put_string(kv_, key), put<uint32_t>(kv_, 6), put(kv_, v), ++kv_count_;
}
void GgufWriter::add_bool(const std::string& key, bool v) {
  put_string(kv_, key), put<uint32_t>(kv_, 7), put<uint8_t>(kv_, v ? 1 : 0), ++kv_count_;
}
void GgufWriter::add_string(const std::string& key, const std::string& v) {
  put_string(kv_, key), put<uint32_t>(kv_, 8), put_string(kv_, v), ++kv_count_;
}
void GgufWriter::add_strings(const std::string& key, const std::vector<std::string>& v) {
  put_string(kv_, key), put<uint32_t>(kv_, 9), put<uint32_t>(kv_, 8), put<uint64_t>(kv_, v.size());
  for (const auto& s : v) put_string(kv_, s);
  ++kv_count_;
}
void GgufWriter::add_i32s(const std::string& key, const std::vector<int32_t>& v) {
  put_string(kv_, key), put<uint32_t>(kv_, 9), put<uint32_t>(kv_, 5), put<uint64_t>(kv_, v.size());
  for (int32_t x : v) put(kv_, x);
  ++kv_count_;
}

std::vector<uint8_t> encode_tensor(TensorType type, const std::vector<float>& values) {
  std::vector<uint8_t> out;
  constexpr std::size_t kBlock = 32;
  switch (type) {
    case TensorType::f32:
      for (float v : values) put(out, v);
      return out;
    case TensorType::f16:
      for (float v : values) put_half(out, v);
      return out;
    case TensorType::bf16:
      for (float v : values) put<uint16_t>(out, float_to_bf16(v));
      return out;
    default: break;
  }
  if (values.size() % kBlock != 0) throw std::invalid_argument("block tensor size");
  for (std::size_t b = 0; b < values.size(); b += kBlock) {
    const float* x = values.data() + b;
    if (type == TensorType::q8_0) {
      float amax = 0;
      for (std::size_t j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
      const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
      put_half(out, d);
      for (std::size_t j = 0; j < kBlock; ++j) put<int8_t>(out, static_cast<int8_t>(std::lround(x[j] * id)));
    } else if (type == TensorType::q4_0) {
      float amax = 0, vmax = 0;
      for (std::size_t j = 0; j < kBlock; ++j) {
        if (std::fabs(x[j]) > amax) amax = std::fabs(x[j]), vmax = x[j];
      }
      const float d = vmax / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
      put_half(out, d);
      for (std::size_t j = 0; j < kBlock / 2; ++j) {
        const int lo = std::min(15, static_cast<int>(x[j] * id + 8.5f));
        const int hi = std::min(15, static_cast<int>(x[j + kBlock / 2] * id + 8.5f));
        put<uint8_t>(out, static_cast<uint8_t>(lo | (hi << 4)));
      }
    } else if (type == TensorType::q4_1) {
      float lo = x[0], hi = x[0];
      for (std::size_t j = 0; j < kBlock; ++j) lo = std::min(lo, x[j]), hi = std::max(hi, x[j]);
      const float d = (hi - lo) / 15.0f, id = d != 0 ? 1.0f / d : 0.0f;
      put_half(out, d);
      put_half(out, lo);
      for (std::size_t j = 0; j < kBlock / 2; ++j) {
        const int a = std::min(15, static_cast<int>((x[j] - lo) * id + 0.5f));
        const int b = std::min(15, static_cast<int>((x[j + kBlock / 2] - lo) * id + 0.5f));
        put<uint8_t>(out, static_cast<uint8_t>(a | (b << 4)));
      }
    }
  }
  return out;
}

void GgufWriter::add_tensor(const std::string& name, const std::vector<uint64_t>& dims,
                            TensorType type, const std::vector<float>& values) {
  add_raw_tensor(name, dims, type, encode_tensor(type, values));
}

void GgufWriter::add_raw_tensor(const std::string& name, const std::vector<uint64_t>& dims,
                                TensorType type, const std::vector<uint8_t>& data) {
  tensors_.push_back({name, dims, type, data});
}

std::vector<uint8_t> GgufWriter::bytes(uint32_t alignment) const {
  std::vector<uint8_t> out;
  put<uint32_t>(out, 0x46554747u);
  put<uint32_t>(out, 3);
  put<uint64_t>(out, tensors_.size());
  put<uint64_t>(out, kv_count_ + (alignment != 32 ? 1 : 0));
  out.insert(out.end(), kv_.begin(), kv_.end());
  if (alignment != 32) {
    put_string(out, "general.alignment"), put<uint32_t>(out, 4), put<uint32_t>(out, alignment);
  }
  auto align_up = [&](uint64_t x) { return (x + alignment - 1) / alignment * alignment; };
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    put_string(out, t.name);
    put<uint32_t>(out, static_cast<uint32_t>(t.dims.size()));
    for (uint64_t d : t.dims) put<uint64_t>(out, d);
    put<uint32_t>(out, static_cast<uint32_t>(t.type));
    put<uint64_t>(out, offset);
    offset = align_up(offset + t.data.size());
  }
  out.resize(align_up(out.size()), 0);
  const std::size_t data_start = out.size();
  for (const Tensor& t : tensors_) {
    out.insert(out.end(), t.data.begin(), t.data.end());
    out.resize(data_start + align_up(out.size() - data_start), 0);
  }
  return out;
}

void GgufWriter::write(const std::string& path) const {
  const std::vector<uint8_t> b = bytes();
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

std::vector<uint8_t> tiny_llama_gguf(const TinyLlamaSpec& s) {
  std::mt19937_64 rng(s.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto random = [&](std::size_t n, float scale) {
    std::vector<float> v(n);
    for (float& x : v) x = normal(rng) * scale;
    return v;
  };
  // Vocabulary: the 256 byte tokens in GPT-2's byte->unicode spelling, then a few merges.
  std::vector<std::string> vocab;
  {
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      const uint32_t cp = printable ? b : next++;
      std::string u;
      if (cp < 0x80) {
        u += static_cast<char>(cp);
      } else {
        u += static_cast<char>(0xC0 | (cp >> 6));
        u += static_cast<char>(0x80 | (cp & 0x3F));
      }
      vocab.push_back(u);
    }
  }
  const std::vector<std::string> merges = {"t h", "th e", "\xC4\xA0 the", "a n", "an d"};
  for (const auto& m : merges) {
    std::string joined = m;
    joined.erase(joined.find(' '), 1);
    vocab.push_back(joined);
  }
  vocab.push_back("<|endoftext|>");
  std::vector<int32_t> types(vocab.size(), 1);
  types.back() = 3;

  GgufWriter w;
  const int head_dim = s.n_embd / s.n_head;
  const auto embd = static_cast<uint64_t>(s.n_embd), kv_dim = static_cast<uint64_t>(s.n_head_kv * head_dim);
  const auto n_vocab = static_cast<uint64_t>(vocab.size());
  w.add_string("general.architecture", "llama");
  w.add_u32("llama.block_count", static_cast<uint32_t>(s.n_layers));
  w.add_u32("llama.embedding_length", static_cast<uint32_t>(s.n_embd));
  w.add_u32("llama.feed_forward_length", static_cast<uint32_t>(s.n_ff));
  w.add_u32("llama.attention.head_count", static_cast<uint32_t>(s.n_head));
  w.add_u32("llama.attention.head_count_kv", static_cast<uint32_t>(s.n_head_kv));
  w.add_u32("llama.rope.dimension_count", static_cast<uint32_t>(s.n_rot));
  w.add_f32("llama.rope.freq_base", s.rope_base);
  w.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.add_u32("llama.context_length", 4096);
  w.add_string("tokenizer.ggml.model", "gpt2");
  w.add_strings("tokenizer.ggml.tokens", vocab);
  w.add_strings("tokenizer.ggml.merges", merges);
  w.add_i32s("tokenizer.ggml.token_type", types);
  w.add_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(vocab.size() - 1));

  const TensorType kinds[] = {TensorType::f32, TensorType::f16, TensorType::q8_0,
                              TensorType::q4_0, TensorType::q4_1};
  int next_kind = 0;
  auto matrix = [&](const std::string& name, uint64_t cols, uint64_t rows) {
    const TensorType t = kinds[next_kind++ % 5];
    w.add_tensor(name, {cols, rows}, t, random(cols * rows, 1.0f / std::sqrt(static_cast<float>(cols))));
  };
  auto norm = [&](const std::string& name) {
    std::vector<float> g = random(embd, 0.1f);
    for (float& x : g) x += 1.0f;
    w.add_tensor(name, {embd}, TensorType::f32, g);
  };
  w.add_tensor("token_embd.weight", {embd, n_vocab}, TensorType::q8_0, random(embd * n_vocab, 1.0f));
  norm("output_norm.weight");
  if (!s.tied_output) matrix("output.weight", embd, n_vocab);
  for (int l = 0; l < s.n_layers; ++l) {
    const std::string p = fmt::format("blk.{}.", l);
    norm(p + "attn_norm.weight");
    matrix(p + "attn_q.weight", embd, embd);
    matrix(p + "attn_k.weight", embd, kv_dim);
    matrix(p + "attn_v.weight", embd, kv_dim);
    matrix(p + "attn_output.weight", embd, embd);
    norm(p + "ffn_norm.weight");
    matrix(p + "ffn_gate.weight", embd, static_cast<uint64_t>(s.n_ff));
    matrix(p + "ffn_up.weight", embd, static_cast<uint64_t>(s.n_ff));
    matrix(p + "ffn_down.weight", static_cast<uint64_t>(s.n_ff), embd);
  }
  return w.bytes();
}

}  // namespace tqkv::model::testing
