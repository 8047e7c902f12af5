#include "llama.hpp"

#include <algorithm>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "tqkv/error.hpp"

namespace tqkv::model {
namespace {

int config_int(const GgufFile& f, const std::string& key, uint64_t max_value) {
  const uint64_t v = f.get_uint(key);
  if (v == 0 || v > max_value) {
    raise(Status::io_error, fmt::format("GGUF {}: {} = {} is not in [1, {}]", f.origin(), key, v,
                                        max_value));
  }
  return static_cast<int>(v);
}

// Loads a weight of shape [rows][cols] (GGUF dims {cols, rows}) as float32.
std::vector<float> load(const GgufFile& f, const std::string& name, uint64_t cols, uint64_t rows) {
  const GgufTensorInfo& info = f.tensor(name);
  const uint64_t want_rows = rows == 0 ? 1 : rows;
  const bool ok = info.dims[0] == cols && info.rows() == want_rows &&
                  (rows == 0 ? info.dims.size() == 1 : info.dims.size() == 2);
  if (!ok) {
    std::string dims;
    for (uint64_t d : info.dims) dims += fmt::format("{}{}", dims.empty() ? "" : ", ", d);
    raise(Status::io_error,
          fmt::format("GGUF {}: tensor '{}' has dims [{}], expected [{}{}]", f.origin(), name,
                      dims, cols, rows == 0 ? std::string() : fmt::format(", {}", rows)));
  }
  return f.dequantize(info);
}

}  // namespace

LlamaConfig LlamaConfig::from_gguf(const GgufFile& f) {
  const std::string& arch = f.get_string("general.architecture");
  if (arch != "llama") {
    raise(Status::unsupported,
          fmt::format("GGUF {}: architecture '{}' is not supported (only 'llama')", f.origin(), arch));
  }
  // Bounds far above any real llama but low enough that products stay in int range.
  constexpr uint64_t kMaxDim = 1 << 16, kMaxLayers = 1024, kMaxVocab = 1 << 22;
  LlamaConfig c;
  c.n_layers = config_int(f, "llama.block_count", kMaxLayers);
  c.n_embd = config_int(f, "llama.embedding_length", kMaxDim);
  c.n_ff = config_int(f, "llama.feed_forward_length", kMaxDim * 4);
  c.n_head = config_int(f, "llama.attention.head_count", kMaxDim);
  c.n_head_kv = f.has("llama.attention.head_count_kv")
                    ? config_int(f, "llama.attention.head_count_kv", kMaxDim)
                    : c.n_head;
  if (c.n_embd % c.n_head != 0 || c.n_head % c.n_head_kv != 0) {
    raise(Status::io_error,
          fmt::format("GGUF {}: embedding {} / heads {} / KV heads {} do not divide", f.origin(),
                      c.n_embd, c.n_head, c.n_head_kv));
  }
  c.head_dim = c.n_embd / c.n_head;
  c.n_rot = f.has("llama.rope.dimension_count")
                ? config_int(f, "llama.rope.dimension_count", kMaxDim)
                : c.head_dim;
  if (c.n_rot > c.head_dim || c.n_rot % 2 != 0) {
    raise(Status::io_error, fmt::format("GGUF {}: llama.rope.dimension_count {} is odd or above "
                                        "the head dim {}", f.origin(), c.n_rot, c.head_dim));
  }
  c.rope_base = static_cast<float>(f.get_float("llama.rope.freq_base", 10000.0));
  c.rms_eps = static_cast<float>(f.get_float("llama.attention.layer_norm_rms_epsilon", 1e-5));
  if (!(c.rope_base > 0) || !(c.rms_eps > 0)) {
    raise(Status::io_error, fmt::format("GGUF {}: rope base {} and RMS epsilon {} must be > 0",
                                        f.origin(), c.rope_base, c.rms_eps));
  }
  c.context_length = static_cast<int>(std::min<uint64_t>(f.get_uint("llama.context_length", 0), 1u << 30));
  const GgufTensorInfo& embd = f.tensor("token_embd.weight");
  if (embd.dims.size() != 2 || embd.dims[1] > kMaxVocab) {
    raise(Status::io_error, fmt::format("GGUF {}: token_embd.weight is not [n_embd, n_vocab]", f.origin()));
  }
  c.n_vocab = static_cast<int>(embd.dims[1]);
  return c;
}

LlamaModel::LlamaModel(const GgufFile& f) : config_(LlamaConfig::from_gguf(f)) {
  const LlamaConfig& c = config_;
  const auto embd = static_cast<uint64_t>(c.n_embd);
  const auto kv_dim = static_cast<uint64_t>(c.n_head_kv) * c.head_dim;
  token_embd_ = load(f, "token_embd.weight", embd, static_cast<uint64_t>(c.n_vocab));
  output_norm_ = load(f, "output_norm.weight", embd, 0);
  if (f.find_tensor("output.weight") != nullptr) {
    output_ = load(f, "output.weight", embd, static_cast<uint64_t>(c.n_vocab));
  }
  layers_.resize(static_cast<std::size_t>(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    LlamaLayer& L = layers_[static_cast<std::size_t>(l)];
    const std::string p = fmt::format("blk.{}.", l);
    L.attn_norm = load(f, p + "attn_norm.weight", embd, 0);
    L.wq = load(f, p + "attn_q.weight", embd, embd);
    L.wk = load(f, p + "attn_k.weight", embd, kv_dim);
    L.wv = load(f, p + "attn_v.weight", embd, kv_dim);
    L.wo = load(f, p + "attn_output.weight", embd, embd);
    L.ffn_norm = load(f, p + "ffn_norm.weight", embd, 0);
    L.w_gate = load(f, p + "ffn_gate.weight", embd, static_cast<uint64_t>(c.n_ff));
    L.w_up = load(f, p + "ffn_up.weight", embd, static_cast<uint64_t>(c.n_ff));
    L.w_down = load(f, p + "ffn_down.weight", static_cast<uint64_t>(c.n_ff), embd);
  }
}

LlamaSession::LlamaSession(const LlamaModel& model, const KvSpec& kv, int capacity)
    : LlamaSession(model, std::vector<KvSpec>(static_cast<std::size_t>(model.config().n_layers), kv),
                   capacity) {}

LlamaSession::LlamaSession(const LlamaModel& model, const std::vector<KvSpec>& kv_per_layer,
                           int capacity)
    : model_(model), capacity_(capacity) {
  const LlamaConfig& c = model.config();
  if (capacity <= 0) {
    raise(Status::invalid_argument, fmt::format("session capacity {} must be > 0", capacity));
  }
  if (kv_per_layer.size() != static_cast<std::size_t>(c.n_layers)) {
    raise(Status::invalid_argument, fmt::format("{} KV specs for {} layers", kv_per_layer.size(),
                                                c.n_layers));
  }
  for (int l = 0; l < c.n_layers; ++l) {
    stores_.push_back(make_kv_store(kv_per_layer[static_cast<std::size_t>(l)], l, c.n_head_kv,
                                    c.head_dim, capacity));
  }
  const auto chunk = static_cast<std::size_t>(kMaxChunk);
  x_.resize(chunk * c.n_embd);
  h_.resize(chunk * c.n_embd);
  q_.resize(chunk * c.n_embd);
  k_.resize(chunk * c.n_head_kv * c.head_dim);
  v_.resize(k_.size());
  attn_.resize(chunk * c.n_embd);
  ff_a_.resize(chunk * c.n_ff);
  ff_b_.resize(chunk * c.n_ff);
}

void LlamaSession::set_layer_store(int layer, std::unique_ptr<KvStore> store) {
  if (layer < 0 || layer >= model_.config().n_layers || store == nullptr || length_ != 0) {
    raise(Status::invalid_argument,
          fmt::format("set_layer_store: layer {} of {}, store {}, session length {} (must be 0)",
                      layer, model_.config().n_layers, store ? "set" : "null", length_));
  }
  stores_[static_cast<std::size_t>(layer)] = std::move(store);
}

void LlamaSession::reset() {
  for (auto& s : stores_) s->reset();
  length_ = 0;
}

void LlamaSession::forward(const int* tokens, int n, float* logits, int n_out) {
  if (n < 0 || n_out < 0 || n_out > n || (n_out > 0 && logits == nullptr) ||
      (n > 0 && tokens == nullptr)) {
    raise(Status::invalid_argument,
          fmt::format("forward: n = {}, n_out = {} (need 0 <= n_out <= n) and non-null buffers", n,
                      n_out));
  }
  if (length_ + n > capacity_) {
    raise(Status::out_of_range, fmt::format("forward: {} tokens after {} exceed the session "
                                            "capacity {}", n, length_, capacity_));
  }
  const int vocab = model_.config().n_vocab;
  for (int i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      raise(Status::out_of_range, fmt::format("forward: token {} at index {} is not in [0, {})",
                                              tokens[i], i, vocab));
    }
  }
  for (int start = 0; start < n; start += kMaxChunk) {
    const int len = std::min(kMaxChunk, n - start);
    // Logits rows wanted from this chunk: those among the last n_out of the whole call.
    const int first_out = n - n_out;
    const int out_begin = std::max(first_out, start);
    const int chunk_out = std::max(0, start + len - out_begin);
    float* chunk_logits =
        chunk_out > 0 ? logits + static_cast<std::size_t>(out_begin - first_out) * vocab : nullptr;
    forward_chunk(tokens + start, len, chunk_logits, chunk_out);
  }
}

void LlamaSession::forward_chunk(const int* tokens, int n, float* logits, int n_out) {
  const LlamaConfig& c = model_.config();
  const int embd = c.n_embd, kv_dim = c.n_head_kv * c.head_dim;
  for (int i = 0; i < n; ++i) {
    const float* e = model_.token_embedding().data() + static_cast<std::size_t>(tokens[i]) * embd;
    std::copy(e, e + embd, x_.data() + static_cast<std::size_t>(i) * embd);
  }
  for (int l = 0; l < c.n_layers; ++l) {
    const LlamaLayer& L = model_.layers()[static_cast<std::size_t>(l)];
    rms_norm(x_.data(), L.attn_norm.data(), h_.data(), n, embd, c.rms_eps);
    matmul(h_.data(), L.wq.data(), q_.data(), n, embd, embd);
    matmul(h_.data(), L.wk.data(), k_.data(), n, embd, kv_dim);
    matmul(h_.data(), L.wv.data(), v_.data(), n, embd, kv_dim);
    for (int i = 0; i < n; ++i) {
      const int64_t pos = length_ + i;
      rope(q_.data() + static_cast<std::size_t>(i) * embd, c.n_head, c.head_dim, c.n_rot, pos,
           c.rope_base, c.rope_layout);
      rope(k_.data() + static_cast<std::size_t>(i) * kv_dim, c.n_head_kv, c.head_dim, c.n_rot,
           pos, c.rope_base, c.rope_layout);
    }
    KvStore& store = *stores_[static_cast<std::size_t>(l)];
    store.append(k_.data(), v_.data(), n);
    store.attend(q_.data(), n, c.n_head, attn_.data());
    matmul(attn_.data(), L.wo.data(), h_.data(), n, embd, embd);
    for (std::size_t j = 0; j < static_cast<std::size_t>(n) * embd; ++j) x_[j] += h_[j];

    rms_norm(x_.data(), L.ffn_norm.data(), h_.data(), n, embd, c.rms_eps);
    matmul(h_.data(), L.w_gate.data(), ff_a_.data(), n, embd, c.n_ff);
    matmul(h_.data(), L.w_up.data(), ff_b_.data(), n, embd, c.n_ff);
    swiglu(ff_a_.data(), ff_b_.data(), static_cast<int64_t>(n) * c.n_ff);
    matmul(ff_a_.data(), L.w_down.data(), h_.data(), n, c.n_ff, embd);
    for (std::size_t j = 0; j < static_cast<std::size_t>(n) * embd; ++j) x_[j] += h_[j];
  }
  length_ += n;
  if (n_out > 0) {
    const float* last = x_.data() + static_cast<std::size_t>(n - n_out) * embd;
    rms_norm(last, model_.output_norm().data(), h_.data(), n_out, embd, c.rms_eps);
    matmul(h_.data(), model_.output_weight().data(), logits, n_out, embd, c.n_vocab);
  }
}

KeySignChoice calibrate_key_signs(const LlamaModel& model, const KvSpec& kv,
                                  const std::vector<int>& tokens, int ctx, int windows,
                                  int candidates, bool per_layer,
                                  const std::function<void(int64_t, int64_t)>& progress) {
  const LlamaConfig& c = model.config();
  auto fail = [](const std::string& why) -> void {
    raise(Status::invalid_argument, "calibrate_key_signs: " + why);
  };
  if (kv.kind != KvKind::tqkv || !is_quantized(kv.format.key)) {
    fail(fmt::format("'{}' has no quantized keys to choose signs for", kv_spec_name(kv)));
  }
  if (!key_sign_option(kv).empty() || !kv.key_sign_choice.empty()) {
    fail(fmt::format("the key signs of '{}' are set by '{}'", kv_spec_name(kv),
                     kv.key_sign_choice.empty() ? key_sign_option(kv) : "a key-sign choice"));
  }
  if (candidates < 1 || candidates > kMaxKeySignCandidates) {
    fail(fmt::format("candidates {} is not in [1, {}]", candidates, kMaxKeySignCandidates));
  }
  if (ctx < 1 || windows < 1) fail(fmt::format("ctx {} and windows {} must be >= 1", ctx, windows));
  const int64_t total = static_cast<int64_t>(ctx) * windows;
  if (static_cast<int64_t>(tokens.size()) < total) {
    fail(fmt::format("{} tokens are fewer than {} windows of {}", tokens.size(), windows, ctx));
  }
  std::vector<KvSpec> shadows;
  for (int k = 0; k < candidates; ++k) {
    KvSpec s = kv;
    s.format.value = Format::f16;  // only the keys' error is measured
    s.key_sign_choice.assign(static_cast<std::size_t>(c.n_head_kv), k);
    shadows.push_back(s);
  }
  LlamaSession session(model, KvSpec{KvKind::f32}, ctx);
  std::vector<const ErrorProbeStore*> probes;
  for (int l = 0; l < c.n_layers; ++l) {
    auto store = std::make_unique<ErrorProbeStore>(shadows, l, c.n_head_kv, c.head_dim, ctx, c.n_head);
    probes.push_back(store.get());
    session.set_layer_store(l, std::move(store));
  }
  for (int w = 0; w < windows; ++w) {
    session.reset();
    const int* window = tokens.data() + static_cast<std::size_t>(w) * ctx;
    for (int start = 0; start < ctx; start += LlamaSession::kMaxChunk) {
      session.forward(window + start, std::min(LlamaSession::kMaxChunk, ctx - start), nullptr, 0);
      if (progress) progress(static_cast<int64_t>(w) * ctx + std::min(start + LlamaSession::kMaxChunk, ctx), total);
    }
  }

  KeySignChoice out;
  out.n_layers = c.n_layers;
  out.n_kv_heads = c.n_head_kv;
  out.head_dim = c.head_dim;
  out.key_format = kv.format.key;
  out.candidates = candidates;
  out.base_seed = kv.rotation_seed;
  out.per_layer = per_layer;
  out.calibration_kv = kv_spec_name(kv);
  out.ctx = ctx;
  out.windows = windows;
  const int group = c.n_head / c.n_head_kv;
  for (int l = 0; l < c.n_layers; ++l) {
    const ErrorProbeStore& probe = *probes[static_cast<std::size_t>(l)];
    std::vector<std::vector<double>> error(static_cast<std::size_t>(c.n_head_kv),
                                           std::vector<double>(static_cast<std::size_t>(candidates), 0.0));
    std::vector<double> reference(static_cast<std::size_t>(c.n_head_kv), 0.0);
    for (int h = 0; h < c.n_head_kv; ++h) {
      for (int g = h * group; g < (h + 1) * group; ++g) {
        reference[static_cast<std::size_t>(h)] += probe.reference_square(g);
        for (int k = 0; k < candidates; ++k) error[static_cast<std::size_t>(h)][static_cast<std::size_t>(k)] += probe.squared_error(k, g);
      }
    }
    auto argmin = [](const std::vector<double>& e) {
      return static_cast<int>(std::min_element(e.begin(), e.end()) - e.begin());
    };
    std::vector<int> chosen(static_cast<std::size_t>(c.n_head_kv));
    if (per_layer) {
      std::vector<double> layer_error(static_cast<std::size_t>(candidates), 0.0);
      for (const auto& e : error) {
        for (std::size_t k = 0; k < e.size(); ++k) layer_error[k] += e[k];
      }
      std::fill(chosen.begin(), chosen.end(), argmin(layer_error));
    } else {
      for (std::size_t h = 0; h < chosen.size(); ++h) chosen[h] = argmin(error[h]);
    }
    out.chosen.push_back(std::move(chosen));
    out.error_sq.push_back(std::move(error));
    out.reference_sq.push_back(std::move(reference));
  }
  return out;
}

}  // namespace tqkv::model
