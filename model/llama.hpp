// A llama-architecture model (embeddings, RMSNorm, RoPE, GQA attention, SwiGLU MLP, tied or
// separate output head) read from GGUF, with its forward pass on the CPU. Attention goes through
// one KvStore per layer — tqkv caches or a baseline (kv_store.hpp).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "gguf.hpp"
#include "kv_store.hpp"
#include "ops.hpp"

namespace tqkv::model {

struct LlamaConfig {
  int n_layers = 0;
  int n_embd = 0;
  int n_ff = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  int n_vocab = 0;
  int n_rot = 0;             // rotated coordinates per head (llama.rope.dimension_count)
  float rope_base = 10000;   // llama.rope.freq_base
  float rms_eps = 1e-5f;
  int context_length = 0;    // the training context (llama.context_length), informational
  // llama.cpp's converter permutes the Q/K rows of Hugging Face llama checkpoints so that the
  // GGUF weights use adjacent-pair RoPE (LLAMA_ROPE_TYPE_NORM for arch "llama").
  RopeLayout rope_layout = RopeLayout::adjacent;

  // Reads llama.* keys; throws Error(unsupported) for other architectures and Error(io_error)
  // for missing or inconsistent values.
  static LlamaConfig from_gguf(const GgufFile& file);
};

struct LlamaLayer {
  std::vector<float> attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down;
};

class LlamaModel {
 public:
  // Dequantizes every weight to float32 once (SmolLM2-135M: about 540 MB).
  explicit LlamaModel(const GgufFile& file);

  const LlamaConfig& config() const { return config_; }
  LlamaConfig& mutable_config() { return config_; }  // for experiments (e.g. the RoPE layout)
  const std::vector<float>& token_embedding() const { return token_embd_; }
  const std::vector<float>& output_weight() const { return output_.empty() ? token_embd_ : output_; }
  bool tied_output() const { return output_.empty(); }
  const std::vector<LlamaLayer>& layers() const { return layers_; }
  const std::vector<float>& output_norm() const { return output_norm_; }

 private:
  LlamaConfig config_;
  std::vector<float> token_embd_, output_norm_, output_;
  std::vector<LlamaLayer> layers_;
};

// One sequence being evaluated: a KV store per layer and the scratch of a chunk of tokens.
class LlamaSession {
 public:
  // `kv` picks the store of every layer; capacity is the most tokens the session will hold.
  LlamaSession(const LlamaModel& model, const KvSpec& kv, int capacity);
  // Per-layer specs (one per layer), e.g. to keep the first and last layers at higher precision.
  LlamaSession(const LlamaModel& model, const std::vector<KvSpec>& kv_per_layer, int capacity);

  // Feeds tokens[0..n) at positions length()..length()+n. Writes logits [n_out][n_vocab] for the
  // last n_out tokens of the chunk (0 <= n_out <= n) into `logits` (may be null if n_out = 0).
  // Processes at most max_chunk tokens per pass through the layers.
  void forward(const int* tokens, int n, float* logits, int n_out);

  int64_t length() const { return length_; }
  int capacity() const { return capacity_; }
  void reset();
  KvStore& layer_store(int layer) { return *stores_[static_cast<std::size_t>(layer)]; }
  // Swaps in another store for one layer (e.g. an ErrorProbeStore); only while length() == 0.
  void set_layer_store(int layer, std::unique_ptr<KvStore> store);

  static constexpr int kMaxChunk = 64;  // tokens per batched projection (GEMM rows)

 private:
  void forward_chunk(const int* tokens, int n, float* logits, int n_out);

  const LlamaModel& model_;
  int capacity_;
  int64_t length_ = 0;
  std::vector<std::unique_ptr<KvStore>> stores_;
  // Scratch for one chunk.
  std::vector<float> x_, h_, q_, k_, v_, attn_, ff_a_, ff_b_;
};

// Chooses the key signs of every (layer, KV head) offline, on `windows` windows of `ctx` tokens
// from the start of `tokens` (each window from an empty cache), among `candidates` candidates
// (0: the plain Hadamard; c >= 1: the signs of base seed kv.rotation_seed + c - 1). The model
// attends on exact f32 K/V (an ErrorProbeStore per layer, as --probe-error); beside it one
// store per candidate attends with kv's key format and options (recent window, codebook, scale
// rule, seed), f16 values, and that candidate on every KV head. Each KV head takes the
// candidate with the smallest squared attention-output error summed over its query heads and
// all positions (per_layer: summed over the layer's KV heads as well; ties go to the smaller
// index). kv must be a tqkv format with quantized keys whose key signs no other option sets.
// progress(tokens done, tokens in all) is called after every kMaxChunk tokens, if given.
KeySignChoice calibrate_key_signs(const LlamaModel& model, const KvSpec& kv,
                                  const std::vector<int>& tokens, int ctx, int windows,
                                  int candidates, bool per_layer,
                                  const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace tqkv::model
