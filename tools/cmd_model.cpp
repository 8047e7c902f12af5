// `tqkv perplexity` and `tqkv generate`: a llama GGUF model on the CPU with its attention running
// on tqkv caches (or a baseline), to measure what KV compression costs on real activations.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "gguf.hpp"
#include "kv_store.hpp"
#include "llama.hpp"
#include "tokenizer.hpp"
#include "tools/commands.hpp"
#include "tqkv/error.hpp"

namespace tqkv::tools {
namespace {

using model::KvSpec;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// A one-line progress bar on stderr: redrawn in place on a terminal, a line per 10 % otherwise.
class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total)
      : label_(std::move(label)), total_(std::max<int64_t>(total, 1)), tty_(isatty(2) != 0),
        start_(Clock::now()) {}
  void update(int64_t done, const std::string& extra = {}) {
    const double frac = static_cast<double>(done) / static_cast<double>(total_);
    const int decile = static_cast<int>(frac * 10);
    if (!tty_ && decile == last_decile_ && done < total_) return;
    last_decile_ = decile;
    const double elapsed = seconds_since(start_);
    const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
    const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : 0.0;
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(frac * kWidth);
    const std::string bar = std::string(static_cast<std::size_t>(filled), '=') +
                            std::string(static_cast<std::size_t>(kWidth - filled), ' ');
    std::fprintf(stderr, "%s%s [%s] %lld/%lld tok  %.1f tok/s  ETA %.0fs  %s%s", tty_ ? "\r" : "",
                 label_.c_str(), bar.c_str(), static_cast<long long>(done),
                 static_cast<long long>(total_), rate, eta, extra.c_str(), tty_ ? "" : "\n");
    std::fflush(stderr);
  }
  void finish() {
    if (tty_) std::fprintf(stderr, "\n");
  }

 private:
  std::string label_;
  int64_t total_;
  bool tty_;
  Clock::time_point start_;
  int last_decile_ = -1;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) raise(Status::io_error, fmt::format("cannot read text file '{}'", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// "--kv-layers 0,29=f16;5-7=tq8": per-layer overrides of the --kv spec.
std::vector<KvSpec> layer_specs(const KvSpec& base, const std::string& overrides, int n_layers) {
  std::vector<KvSpec> specs(static_cast<std::size_t>(n_layers), base);
  std::stringstream groups(overrides);
  std::string group;
  while (std::getline(groups, group, ';')) {
    if (group.empty()) continue;
    const auto eq = group.find('=');
    if (eq == std::string::npos) {
      raise(Status::invalid_argument,
            fmt::format("--kv-layers: '{}' is not LAYERS=FORMAT (e.g. 0,29=f16)", group));
    }
    const KvSpec spec = model::parse_kv_spec(group.substr(eq + 1));
    std::stringstream items(group.substr(0, eq));
    std::string item;
    while (std::getline(items, item, ',')) {
      int lo = 0, hi = 0;
      const auto dash = item.find('-');
      try {
        lo = std::stoi(item.substr(0, dash));
        hi = dash == std::string::npos ? lo : std::stoi(item.substr(dash + 1));
      } catch (const std::exception&) {
        raise(Status::invalid_argument, fmt::format("--kv-layers: '{}' is not a layer or range", item));
      }
      if (lo < 0 || hi >= n_layers || lo > hi) {
        raise(Status::invalid_argument,
              fmt::format("--kv-layers: layers {}-{} not within [0, {})", lo, hi, n_layers));
      }
      for (int l = lo; l <= hi; ++l) specs[static_cast<std::size_t>(l)] = spec;
    }
  }
  return specs;
}

// KV bytes per token over all layers and KV heads, and the bytes that do not grow with the
// context (recent windows, centering and smoothing vectors, KIVI's raw key group).
double kv_bytes_per_token(const std::vector<KvSpec>& specs, const model::LlamaConfig& c) {
  double total = 0;
  for (const KvSpec& s : specs) total += model::kv_spec_bytes_per_position(s, c.head_dim) * c.n_head_kv;
  return total;
}
double kv_fixed_bytes(const std::vector<KvSpec>& specs, const model::LlamaConfig& c) {
  double total = 0;
  for (const KvSpec& s : specs) total += model::kv_spec_fixed_bytes(s, c.head_dim) * c.n_head_kv;
  return total;
}

struct ModelOptions {
  std::string model_path;
  std::string kv = "f16";
  std::string kv_layers;
  std::string scale_rule;
  std::string codebook;
  std::string backend = "auto";
  std::string rope;
  bool no_sign_flips = false;
  std::optional<uint64_t> rotation_seed;
  std::string key_signs;  // a key-sign choice file (--key-signs)

  void add(CLI::App* cmd) {
    cmd->add_option("-m,--model", model_path, "GGUF model file (llama architecture)")->required();
    cmd->add_option("--kv", kv,
                    "KV cache format: a tqkv format (f16, tq4, tq3, tq2, k8v4, k4v2, kf16v4, ...) "
                    "or a baseline (f32, q4_0, kivi2), then optional suffixes: -noflip (no random "
                    "signs; -noflipk / -noflipv: none on the keys / on the values), -pairsignsk / "
                    "-halfsignsk (key signs tied per RoPE pair (2i, 2i+1) / per pair (i, i+d/2)), "
                    "-keysignsN (key signs chosen per head from N candidates on the first chunk), "
                    "-center (key centering), -smooth (per-channel key smoothing), "
                    "-recentN (newest N tokens in f16, attended exactly), e.g. tq4-smooth-recent64");
    cmd->add_option("--kv-layers", kv_layers,
                    "per-layer overrides, e.g. '0,29=f16;1-3=k8v4' (layers counted from 0)");
    cmd->add_option("--scale-rule", scale_rule, "tqkv scale rule: norm or least_squares");
    cmd->add_option("--codebook", codebook, "tqkv codebook: gaussian or beta");
    cmd->add_option("--rotation-seed", rotation_seed,
                    "base seed of the tqkv caches' random signs (default: the library's); to tell a "
                    "format's behaviour from one draw of signs");
    cmd->add_option("--key-signs", key_signs,
                    "key signs per (layer, KV head) from a JSON file that `perplexity "
                    "--calibrate-key-signs` wrote for this model, key format and rotation seed "
                    "(1 byte per KV head and layer; not with -noflip, -noflipk, -keysignsN, "
                    "-pairsignsk, -halfsignsk); with --probe-error, applied to the probed formats instead")
        ->type_name("FILE");
    cmd->add_option("--attention-backend", backend, "auto, reference (scalar oracle) or cpu")
        ->check(CLI::IsMember({"auto", "reference", "cpu"}));
    cmd->add_option("--rope", rope,
                    "override the RoPE pairing: adjacent (llama.cpp normal) or half (neox); "
                    "for experiments only")
        ->check(CLI::IsMember({"adjacent", "half"}));
  }

  // Non-default tqkv options, for result labels ("scale norm", "codebook beta").
  std::string variant() const {
    std::string v;
    if (!scale_rule.empty()) v += "scale " + scale_rule;
    if (!codebook.empty()) v += (v.empty() ? "" : ", ") + std::string("codebook ") + codebook;
    if (rotation_seed) v += (v.empty() ? "" : ", ") + fmt::format("rotation seed {}", *rotation_seed);
    if (!key_signs.empty()) v += (v.empty() ? "" : ", ") + fmt::format("key signs {}", key_signs);
    return v;
  }

  // The key-sign choice of --key-signs, if given.
  std::optional<model::KeySignChoice> key_sign_choice() const {
    if (key_signs.empty()) return std::nullopt;
    return model::load_key_sign_choice(key_signs);
  }

  KvSpec base_spec() const {
    KvSpec spec = model::parse_kv_spec(kv);
    if (!scale_rule.empty()) spec.scale_rule = parse_scale_rule(scale_rule);
    if (!codebook.empty()) spec.codebook = parse_codebook_kind(codebook);
    if (rotation_seed) spec.rotation_seed = *rotation_seed;
    spec.backend = backend == "reference" ? Backend::cpu_reference
                   : backend == "cpu"     ? Backend::cpu
                                          : Backend::automatic;
    return spec;
  }
};

// `spec` of layer l with the file's key signs for that layer, or unchanged without a file.
KvSpec with_layer_key_signs(const KvSpec& spec, const std::optional<model::KeySignChoice>& choice, int l,
                            const model::LlamaConfig& c) {
  return choice ? model::with_key_sign_choice(spec, *choice, l, c.n_layers, c.n_head_kv, c.head_dim) : spec;
}

// The spec of every layer: --kv, --kv-layers, and (with_key_signs) the key signs of --key-signs.
std::vector<KvSpec> model_specs(const ModelOptions& opt, const model::LlamaConfig& c,
                                bool with_key_signs = true) {
  std::vector<KvSpec> specs = layer_specs(opt.base_spec(), opt.kv_layers, c.n_layers);
  const auto choice = with_key_signs ? opt.key_sign_choice() : std::nullopt;
  for (int l = 0; l < c.n_layers; ++l) {
    auto& spec = specs[static_cast<std::size_t>(l)];
    spec = with_layer_key_signs(spec, choice, l, c);
  }
  return specs;
}

struct Loaded {
  model::GgufFile file;
  model::LlamaModel model;
  model::Tokenizer tokenizer;
};

std::unique_ptr<Loaded> load_model(const ModelOptions& opt) {
  const auto t0 = Clock::now();
  auto file = model::GgufFile::open(opt.model_path);
  model::LlamaModel llama(file);
  model::Tokenizer tok(file);
  if (!opt.rope.empty()) {
    llama.mutable_config().rope_layout =
        opt.rope == "half" ? model::RopeLayout::half : model::RopeLayout::adjacent;
  }
  const auto& c = llama.config();
  std::fprintf(stderr,
               "model: %s: %d layers, embd %d, %d heads / %d KV heads, head dim %d, vocab %d, "
               "rope base %.0f (%s pairs), %s output; loaded in %.1f s\n",
               opt.model_path.c_str(), c.n_layers, c.n_embd, c.n_head, c.n_head_kv, c.head_dim,
               c.n_vocab, static_cast<double>(c.rope_base),
               c.rope_layout == model::RopeLayout::adjacent ? "adjacent" : "half",
               llama.tied_output() ? "tied" : "separate", seconds_since(t0));
  return std::unique_ptr<Loaded>(new Loaded{std::move(file), std::move(llama), std::move(tok)});
}

// Natural-log probability of `target` under softmax(logits), in double.
double log_prob(const float* logits, int vocab, int target) {
  float max_logit = logits[0];
  for (int i = 1; i < vocab; ++i) max_logit = std::max(max_logit, logits[i]);
  double sum = 0;
  for (int i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i] - max_logit));
  return static_cast<double>(logits[target] - max_logit) - std::log(sum);
}

int argmax(const float* logits, int vocab) {
  return static_cast<int>(std::max_element(logits, logits + vocab) - logits);
}

// Writes the text's token ids and the logits of its first `count` tokens (one pass from an empty
// cache) for an independent check (scripts/eval/check_logits.py). Little-endian binary:
// int32 n_tokens, int32 count, int32 vocab, int32 tokens[n_tokens], float32 logits[count][vocab].
void dump_logits(const std::string& path, const Loaded& m, const std::vector<KvSpec>& specs,
                 const std::vector<int>& tokens, int count) {
  const int vocab = m.model.config().n_vocab;
  count = std::min<int>(count, static_cast<int>(tokens.size()));
  model::LlamaSession session(m.model, specs, std::max(count, 1));
  std::vector<float> logits(static_cast<std::size_t>(count) * vocab);
  session.forward(tokens.data(), count, logits.data(), count);
  std::ofstream out(path, std::ios::binary);
  const int32_t header[3] = {static_cast<int32_t>(tokens.size()), count, vocab};
  out.write(reinterpret_cast<const char*>(header), sizeof(header));
  out.write(reinterpret_cast<const char*>(tokens.data()),
            static_cast<std::streamsize>(tokens.size() * sizeof(int)));
  out.write(reinterpret_cast<const char*>(logits.data()),
            static_cast<std::streamsize>(logits.size() * sizeof(float)));
  if (!out) raise(Status::io_error, fmt::format("cannot write --dump-logits file '{}'", path));
  std::fprintf(stderr, "perplexity: wrote %zu token ids and the logits of the first %d to %s\n",
               tokens.size(), count, path.c_str());
}

struct PerplexityOptions {
  std::string text_path;
  int ctx = 2048;
  int chunks = 0;
  int64_t max_tokens = 0;
  int score_from = -1;
  std::string dump_path;
  int dump_count = 32;
  std::string probe;
  bool json = false;
  int calibrate_candidates = 0;  // --calibrate-key-signs N
  std::string save_key_signs;
  bool per_layer_key_signs = false;
};

// Candidate c of the key signs, for tables: c = 0 the plain Hadamard, c = 1 the default draw.
std::string candidate_label(int c) {
  return c == 0 ? "c0 plain" : c == 1 ? "c1 default" : fmt::format("c{} seed+{}", c, c - 1);
}

// --calibrate-key-signs: chooses the key signs on the windows and saves the choice; prints per
// layer the attention error of each candidate on every head and of the choice.
void calibrate(const Loaded& m, const ModelOptions& opt, const PerplexityOptions& po,
               const KvSpec& kv, const std::vector<int>& tokens, int n_chunks) {
  ProgressBar bar(fmt::format("calibrate key signs {}", opt.kv), static_cast<int64_t>(n_chunks) * po.ctx);
  const auto t0 = Clock::now();
  model::KeySignChoice choice = model::calibrate_key_signs(
      m.model, kv, tokens, po.ctx, n_chunks, po.calibrate_candidates, po.per_layer_key_signs,
      [&](int64_t done, int64_t) { bar.update(done); });
  bar.finish();
  choice.calibration_text = po.text_path;
  const int n_layers = choice.n_layers, heads = choice.n_kv_heads, n = choice.candidates;
  auto everywhere = [&](int k) {
    return std::vector<std::vector<int>>(static_cast<std::size_t>(n_layers), std::vector<int>(static_cast<std::size_t>(heads), k));
  };
  std::printf("Relative attention error per layer on the calibration text (keys %s, values f16)\n\n| layer |",
              std::string(format_name(choice.key_format)).c_str());
  for (int k = 0; k < n; ++k) std::printf(" %s |", candidate_label(k).c_str());
  std::printf(" chosen | chosen per KV head |\n|---|");
  for (int k = 0; k <= n; ++k) std::printf("---|");
  std::printf("---|\n");
  std::vector<int> count(static_cast<std::size_t>(n), 0);
  for (int l = 0; l < n_layers; ++l) {
    const auto& chosen = choice.chosen[static_cast<std::size_t>(l)];
    std::printf("| %d |", l);
    for (int k = 0; k < n; ++k) std::printf(" %.4f |", choice.layer_error(l, std::vector<int>(static_cast<std::size_t>(heads), k)));
    std::string list;
    for (int k : chosen) {
      list += fmt::format("{}{}", list.empty() ? "" : " ", k);
      ++count[static_cast<std::size_t>(k)];
    }
    std::printf(" %.4f | %s |\n", choice.layer_error(l, chosen), list.c_str());
  }
  std::printf("| mean |");
  for (int k = 0; k < n; ++k) std::printf(" %.4f |", choice.mean_layer_error(everywhere(k)));
  std::printf(" %.4f | |\n\n", choice.mean_layer_error(choice.chosen));
  std::printf("chosen (of %d KV heads x layers):", n_layers * heads);
  for (int k = 0; k < n; ++k) std::printf(" %s %d%s", candidate_label(k).c_str(), count[static_cast<std::size_t>(k)], k + 1 < n ? "," : "\n");
  model::save_key_sign_choice(choice, po.save_key_signs);
  std::fprintf(stderr, "calibrate: %d windows of %d tokens, %d candidates, %s choice, %.1f s; wrote %s\n",
               n_chunks, po.ctx, n, choice.per_layer ? "per-layer" : "per-head", seconds_since(t0),
               po.save_key_signs.c_str());
}

void run_perplexity(const ModelOptions& opt, const PerplexityOptions& po) {
  const int ctx = po.ctx, chunks = po.chunks, score_from = po.score_from;
  const int64_t max_tokens = po.max_tokens;
  const std::string& text_path = po.text_path;
  const std::string& probe = po.probe;
  const bool calibrating = po.calibrate_candidates > 0;
  if (calibrating && (po.save_key_signs.empty() || !probe.empty() || !opt.key_signs.empty() ||
                      !opt.kv_layers.empty())) {
    raise(Status::invalid_argument,
          "--calibrate-key-signs needs --save-key-signs FILE, and takes neither --probe-error, "
          "--key-signs nor --kv-layers");
  }
  if (!calibrating && (!po.save_key_signs.empty() || po.per_layer_key_signs)) {
    raise(Status::invalid_argument,
          "--save-key-signs and --per-layer-key-signs go with --calibrate-key-signs N");
  }
  auto m = load_model(opt);
  const auto& c = m->model.config();
  // With --probe-error the model attends on f32 and --key-signs applies to the probed formats.
  const std::vector<KvSpec> specs = model_specs(opt, c, probe.empty());
  if (ctx < 2) raise(Status::invalid_argument, fmt::format("--ctx {} must be >= 2", ctx));

  const auto t_tok = Clock::now();
  const std::vector<int> tokens = m->tokenizer.encode(read_text(text_path));
  if (!po.dump_path.empty()) dump_logits(po.dump_path, *m, specs, tokens, po.dump_count);
  // As llama.cpp's perplexity: every window of ctx tokens starts from an empty cache and only
  // positions from `score_from` (default ctx/2) on are scored, so each scored token sees at least
  // that many tokens of context.
  const int first_scored = score_from < 0 ? ctx / 2 : score_from;
  if (first_scored >= ctx - 1) {
    raise(Status::invalid_argument,
          fmt::format("--score-from {} leaves nothing to score in a window of --ctx {}", first_scored, ctx));
  }
  const int scored_per_chunk = ctx - first_scored - 1;
  int n_chunks = static_cast<int>(tokens.size() / static_cast<std::size_t>(ctx));
  if (chunks > 0) n_chunks = std::min(n_chunks, chunks);
  if (max_tokens > 0) {
    n_chunks = std::min<int>(n_chunks, static_cast<int>((max_tokens + scored_per_chunk - 1) / scored_per_chunk));
  }
  if (n_chunks < 1) {
    raise(Status::invalid_argument,
          fmt::format("{}: {} tokens are fewer than one window of --ctx {}", text_path,
                      tokens.size(), ctx));
  }
  const std::string kv_name = opt.kv + (opt.kv_layers.empty() ? "" : " [" + opt.kv_layers + "]");
  const double kv_bytes = kv_bytes_per_token(specs, c);
  const double kv_fixed = kv_fixed_bytes(specs, c);
  const double kv_bytes_at_ctx = kv_bytes + kv_fixed / ctx;  // fixed bytes amortised over ctx
  std::fprintf(stderr,
               "perplexity: %zu tokens in %.1f s; %d windows of %d, scoring positions %d..%d; KV %s "
               "(%.0f bytes/token + %.0f fixed bytes = %.0f bytes/token at ctx %d)\n",
               tokens.size(), seconds_since(t_tok), n_chunks, ctx, first_scored, ctx - 2,
               kv_name.c_str(), kv_bytes, kv_fixed, kv_bytes_at_ctx, ctx);
  if (calibrating) {
    calibrate(*m, opt, po, specs.front(), tokens, n_chunks);
    return;
  }

  model::LlamaSession session(m->model, specs, ctx);
  // --probe-error: every layer attends exactly (f32) and measures the listed formats beside it.
  std::vector<KvSpec> probes;
  std::vector<std::string> probe_names;
  std::vector<model::ErrorProbeStore*> probe_stores;
  if (!probe.empty()) {
    std::stringstream list(probe);
    std::string item;
    while (std::getline(list, item, ',')) {
      KvSpec p = model::parse_kv_spec(item);
      p.scale_rule = specs.front().scale_rule;
      p.codebook = specs.front().codebook;
      p.rotation_seed = specs.front().rotation_seed;
      probes.push_back(p);
      probe_names.push_back(item);
    }
    const auto choice = opt.key_sign_choice();
    for (int l = 0; l < c.n_layers; ++l) {
      std::vector<KvSpec> layer_probes = probes;
      for (KvSpec& p : layer_probes) p = with_layer_key_signs(p, choice, l, c);
      auto store = std::make_unique<model::ErrorProbeStore>(layer_probes, l, c.n_head_kv,
                                                            c.head_dim, ctx, c.n_head);
      probe_stores.push_back(store.get());
      session.set_layer_store(l, std::move(store));
    }
    std::fprintf(stderr, "perplexity: --probe-error: the model attends on exact f32 K/V; the "
                         "perplexity below is that of f32\n");
  }
  constexpr int kPiece = model::LlamaSession::kMaxChunk;
  std::vector<float> logits(static_cast<std::size_t>(kPiece) * c.n_vocab);
  double nll = 0, nll_sq = 0;
  int64_t scored = 0, top1 = 0;
  ProgressBar bar(fmt::format("perplexity {}", opt.kv), static_cast<int64_t>(n_chunks) * ctx);
  const auto t0 = Clock::now();
  for (int w = 0; w < n_chunks; ++w) {
    session.reset();
    const int* win = tokens.data() + static_cast<std::size_t>(w) * ctx;
    for (int start = 0; start < ctx; start += kPiece) {
      const int len = std::min(kPiece, ctx - start);
      // Logit rows of positions in [first_scored, ctx - 1) of this piece (each predicts the next).
      const int lo = std::max(start, first_scored), hi = std::min(start + len, ctx - 1);
      const int n_out = std::max(0, start + len - lo);
      session.forward(win + start, len, logits.data(), n_out);
      for (int pos = lo; pos < hi; ++pos) {
        const float* row = logits.data() + static_cast<std::size_t>(pos - lo) * c.n_vocab;
        const double lp = log_prob(row, c.n_vocab, win[pos + 1]);
        nll -= lp;
        nll_sq += lp * lp;
        top1 += argmax(row, c.n_vocab) == win[pos + 1];
        ++scored;
      }
      bar.update(static_cast<int64_t>(w) * ctx + start + len,
                 scored > 0 ? fmt::format("ppl {:.4f}", std::exp(nll / static_cast<double>(scored))) : "");
    }
  }
  bar.finish();
  const double elapsed = seconds_since(t0);
  const double mean = nll / static_cast<double>(scored);
  const double var = std::max(0.0, nll_sq / static_cast<double>(scored) - mean * mean);
  const double ppl = std::exp(mean);
  // Standard error of the perplexity via the delta method on the mean NLL.
  const double ppl_err = ppl * std::sqrt(var / static_cast<double>(scored));
  if (!probe_stores.empty()) {
    // Relative RMS error of each layer's attention output, and the worst query head.
    std::printf("| layer |");
    for (const auto& n : probe_names) std::printf(" %s | %s worst head |", n.c_str(), n.c_str());
    std::printf("\n|---|");
    for (std::size_t i = 0; i < probe_names.size(); ++i) std::printf("---|---|");
    std::printf("\n");
    std::vector<double> mean_error(probes.size(), 0.0);
    for (int l = 0; l < c.n_layers; ++l) {
      std::printf("| %d |", l);
      for (std::size_t sidx = 0; sidx < probes.size(); ++sidx) {
        const auto* st = probe_stores[static_cast<std::size_t>(l)];
        int worst = 0;
        for (int h = 1; h < c.n_head; ++h) {
          if (st->relative_error(static_cast<int>(sidx), h) > st->relative_error(static_cast<int>(sidx), worst)) worst = h;
        }
        const double e = st->relative_error(static_cast<int>(sidx));
        mean_error[sidx] += e / c.n_layers;
        std::printf(" %.4f | %.4f (h%d) |", e, st->relative_error(static_cast<int>(sidx), worst), worst);
      }
      std::printf("\n");
    }
    std::printf("| mean |");
    for (double e : mean_error) std::printf(" %.4f | |", e);
    std::printf("\n");
  }
  if (po.json) {
    std::printf("{\"kv\": \"%s\", \"kv_layers\": \"%s\", \"variant\": \"%s\", \"ctx\": %d, \"windows\": %d, "
                "\"scored_tokens\": %lld, \"nll\": %.8f, \"perplexity\": %.6f, "
                "\"perplexity_stderr\": %.6f, \"top1\": %.6f, \"kv_bytes_per_token\": %.1f, "
                "\"kv_fixed_bytes\": %.0f, \"kv_bytes_per_token_at_ctx\": %.1f, "
                "\"seconds\": %.1f, \"tokens_per_second\": %.2f}\n",
                opt.kv.c_str(), opt.kv_layers.c_str(), opt.variant().c_str(), ctx, n_chunks,
                static_cast<long long>(scored),
                mean, ppl, ppl_err, static_cast<double>(top1) / static_cast<double>(scored),
                kv_bytes, kv_fixed, kv_bytes_at_ctx, elapsed, static_cast<double>(n_chunks) * ctx / elapsed);
  } else {
    std::printf("kv %s: perplexity %.4f +/- %.4f over %lld tokens (ctx %d, %d windows), top-1 "
                "%.2f%%, KV %.0f bytes/token (%.0f at ctx %d with %.0f fixed bytes), %.1f tok/s\n",
                kv_name.c_str(), ppl, ppl_err, static_cast<long long>(scored), ctx, n_chunks,
                100.0 * static_cast<double>(top1) / static_cast<double>(scored), kv_bytes,
                kv_bytes_at_ctx, ctx, kv_fixed,
                static_cast<double>(n_chunks) * ctx / elapsed);
  }
}

// Greedy decoding: returns the generated ids (stops early at end-of-sequence).
std::vector<int> greedy(const Loaded& m, const std::vector<KvSpec>& specs,
                        const std::vector<int>& prompt, int n_new, bool stream) {
  const auto& c = m.model.config();
  model::LlamaSession session(m.model, specs, static_cast<int>(prompt.size()) + n_new);
  std::vector<float> logits(static_cast<std::size_t>(c.n_vocab));
  session.forward(prompt.data(), static_cast<int>(prompt.size()), logits.data(), 1);
  std::vector<int> out;
  for (int i = 0; i < n_new; ++i) {
    const int next = argmax(logits.data(), c.n_vocab);
    out.push_back(next);
    if (stream) {
      std::fputs(m.tokenizer.decode_token(next).c_str(), stdout);
      std::fflush(stdout);
    }
    if (next == m.tokenizer.eos() || i + 1 == n_new) break;
    session.forward(&next, 1, logits.data(), 1);
  }
  return out;
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (unsigned char ch : s) {
    if (ch == '"' || ch == '\\') out += fmt::format("\\{}", static_cast<char>(ch));
    else if (ch < 0x20) out += fmt::format("\\u{:04x}", ch);
    else out += static_cast<char>(ch);
  }
  return out;
}

void run_generate(const ModelOptions& opt, const std::string& prompt_text, int n_new, bool chat,
                  const std::string& agree_with, bool json) {
  if (n_new < 1) raise(Status::invalid_argument, fmt::format("-n {} must be >= 1", n_new));
  auto m = load_model(opt);
  const auto& c = m->model.config();
  const std::vector<KvSpec> specs = model_specs(opt, c);
  // SmolLM2-Instruct's ChatML template, without the default system prompt.
  const std::string text = chat ? "<|im_start|>user\n" + prompt_text +
                                      "<|im_end|>\n<|im_start|>assistant\n"
                                : prompt_text;
  const std::vector<int> prompt = m->tokenizer.encode(text, /*parse_special=*/chat);
  if (prompt.empty()) raise(Status::invalid_argument, "-p: the prompt encodes to no tokens");

  const auto t0 = Clock::now();
  const bool stream = !json && agree_with.empty();
  if (stream) std::fputs(prompt_text.c_str(), stdout);
  const std::vector<int> ids = greedy(*m, specs, prompt, n_new, stream);
  const double elapsed = seconds_since(t0);
  if (stream) std::printf("\n");
  std::fprintf(stderr, "generate: %zu prompt + %zu new tokens with KV %s in %.1f s\n",
               prompt.size(), ids.size(), opt.kv.c_str(), elapsed);
  if (agree_with.empty()) {
    if (json) {
      std::string id_list;
      for (int id : ids) id_list += fmt::format("{}{}", id_list.empty() ? "" : ", ", id);
      std::printf("{\"kv\": \"%s\", \"kv_layers\": \"%s\", \"prompt_tokens\": %zu, "
                  "\"ids\": [%s], \"text\": \"%s\"}\n",
                  opt.kv.c_str(), opt.kv_layers.c_str(), prompt.size(), id_list.c_str(),
                  json_escape(m->tokenizer.decode(ids)).c_str());
    }
    return;
  }
  KvSpec ref = model::parse_kv_spec(agree_with);
  ref.backend = specs.front().backend;
  const std::vector<int> ref_ids =
      greedy(*m, std::vector<KvSpec>(static_cast<std::size_t>(c.n_layers), ref), prompt, n_new, false);
  std::size_t first_diff = 0;
  while (first_diff < ids.size() && first_diff < ref_ids.size() && ids[first_diff] == ref_ids[first_diff]) {
    ++first_diff;
  }
  const bool same = first_diff == ids.size() && first_diff == ref_ids.size();
  if (json) {
    std::printf("{\"kv\": \"%s\", \"reference\": \"%s\", \"generated\": %zu, \"first_divergence\": "
                "%lld, \"text\": \"%s\", \"reference_text\": \"%s\"}\n",
                opt.kv.c_str(), agree_with.c_str(), ids.size(),
                same ? -1LL : static_cast<long long>(first_diff),
                json_escape(m->tokenizer.decode(ids)).c_str(),
                json_escape(m->tokenizer.decode(ref_ids)).c_str());
  } else {
    std::printf("%s: %s\n%s: %s\n", opt.kv.c_str(), m->tokenizer.decode(ids).c_str(),
                agree_with.c_str(), m->tokenizer.decode(ref_ids).c_str());
    if (same) {
      std::printf("agreement: all %zu tokens identical\n", ids.size());
    } else {
      std::printf("agreement: first divergence at generated token %zu\n", first_diff);
    }
  }
}

}  // namespace

void add_model_commands(CLI::App& app) {
  {
    auto* cmd = app.add_subcommand(
        "perplexity",
        "Perplexity of a llama GGUF model on a text file, attention on a tqkv cache (or baseline)");
    auto opt = std::make_shared<ModelOptions>();
    opt->add(cmd);
    auto po = std::make_shared<PerplexityOptions>();
    cmd->add_option("-f,--file", po->text_path, "UTF-8 text to evaluate")->required();
    cmd->add_option("--score-from", po->score_from,
                    "first scored position of each window (default: ctx/2, as llama.cpp)");
    cmd->add_option("--dump-logits", po->dump_path,
                    "write the token ids and the logits of the first --dump-count tokens to a "
                    "binary file (for scripts/eval/check_logits.py)");
    cmd->add_option("--probe-error", po->probe,
                    "comma-separated formats whose attention error is measured per layer and "
                    "head beside exact f32 attention (the model runs on f32)");
    cmd->add_option("--dump-count", po->dump_count, "tokens whose logits --dump-logits writes")
        ->capture_default_str();
    cmd->add_option("--ctx", po->ctx, "window length in tokens (each window starts from an empty "
                                      "cache; its second half is scored)")
        ->capture_default_str();
    auto* o_chunks = cmd->add_option("--chunks", po->chunks, "evaluate at most this many windows");
    cmd->add_option("--tokens", po->max_tokens, "evaluate windows until this many tokens are scored")
        ->excludes(o_chunks);
    cmd->add_flag("--json", po->json, "print the result as one JSON line");
    cmd->add_option("--calibrate-key-signs", po->calibrate_candidates,
                    "instead of perplexity: choose the key signs of every (layer, KV head) among N "
                    "candidates (0: plain Hadamard, c >= 1: the signs of base seed "
                    "--rotation-seed + c - 1, so 1 is the default) on the windows of the text "
                    "(--ctx, --chunks; use a text disjoint from the evaluated one). The model "
                    "attends on exact f32 K/V; each candidate's store has the keys of --kv "
                    "(format, -recentN, ...), f16 values and that candidate on every head; each "
                    "head takes the candidate with the smallest squared attention-output error "
                    "over all positions. Prints the error per layer, writes --save-key-signs")
        ->check(CLI::Range(1, model::kMaxKeySignCandidates));
    cmd->add_option("--save-key-signs", po->save_key_signs,
                    "with --calibrate-key-signs: the JSON file to write (read by --key-signs)")
        ->type_name("FILE");
    cmd->add_flag("--per-layer-key-signs", po->per_layer_key_signs,
                  "with --calibrate-key-signs: one candidate per layer (the smallest error summed "
                  "over its KV heads) instead of one per KV head");
    cmd->callback([=] { run_perplexity(*opt, *po); });
  }
  {
    auto* cmd = app.add_subcommand(
        "generate", "Greedy generation with a llama GGUF model, attention on a tqkv cache");
    auto opt = std::make_shared<ModelOptions>();
    opt->add(cmd);
    auto prompt = std::make_shared<std::string>();
    auto n_new = std::make_shared<int>(64);
    auto chat = std::make_shared<bool>(false);
    auto agree = std::make_shared<std::string>();
    auto json = std::make_shared<bool>(false);
    cmd->add_option("-p,--prompt", *prompt, "prompt text")->required();
    cmd->add_option("-n,--tokens", *n_new, "tokens to generate")->capture_default_str();
    cmd->add_flag("--chat", *chat, "wrap the prompt in the model's ChatML template");
    cmd->add_option("--agree-with", *agree,
                    "also generate with this KV format and report the first diverging token");
    cmd->add_flag("--json", *json, "print the result as one JSON line");
    cmd->callback([=] { run_generate(*opt, *prompt, *n_new, *chat, *agree, *json); });
  }
}

}  // namespace tqkv::tools
