// Key signs chosen per (layer, KV head) offline: the choice file (save, load, validation), its
// use by a model session (with_key_sign_choice), and the calibration that makes it
// (calibrate_key_signs) on a tiny random-weight GGUF written by the test.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kv_store.hpp"
#include "llama.hpp"
#include "tqkv/error.hpp"
#include "test_support.hpp"

namespace tqkv::model {
namespace {

using test::max_abs;
using test::max_abs_diff;
using test::random_tokens;
using test::run;
using test::Tiny;

constexpr uint64_t kSeed = 9090;

// A file in the test's temporary folder, removed when the test ends.
class TempFile {
 public:
  explicit TempFile(const std::string& name)
      : path_((std::filesystem::temp_directory_path() /
               (std::string("tqkv-test-") + std::to_string(::getpid()) + "-" + name))
                  .string()) {}
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }
  void write(const std::string& text) const { std::ofstream(path_, std::ios::binary) << text; }
  std::string read() const {
    std::ifstream in(path_, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }

 private:
  std::string path_;
};

// A choice for 3 layers of 2 KV heads (head_dim 32) among 4 candidates, with its errors.
KeySignChoice sample_choice() {
  KeySignChoice c;
  c.n_layers = 3;
  c.n_kv_heads = 2;
  c.head_dim = 32;
  c.key_format = Format::tq3;
  c.candidates = 4;
  c.base_seed = 12345678901234ull;
  c.chosen = {{0, 3}, {2, 1}, {1, 1}};
  c.error_sq = {{{1.5, 2, 3, 4}, {4, 3, 2, 0.25}},
                {{9, 8, 1, 7}, {6, 0.5, 6, 6}},
                {{3, 1, 3, 3}, {2, 1, 2, 2}}};
  c.reference_sq = {{10, 20}, {30, 40}, {50, 60}};
  c.calibration_kv = "tq3-recent4";
  c.calibration_text = "calibration.txt";
  c.ctx = 1024;
  c.windows = 2;
  return c;
}

// The message load_key_sign_choice throws for a file holding `text`, or "no error".
std::string load_error(const std::string& text) {
  const TempFile file("bad.json");
  file.write(text);
  try {
    (void)load_key_sign_choice(file.path());
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), Status::io_error);
    EXPECT_NE(std::string(e.what()).find(file.path()), std::string::npos) << e.what();
    return e.what();
  }
  return "no error";
}

// The sample file's text with the first `from` replaced by `to`.
std::string edited(const std::string& from, const std::string& to) {
  const TempFile file("sample.json");
  save_key_sign_choice(sample_choice(), file.path());
  std::string text = file.read();
  const auto at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return at == std::string::npos ? text : text.replace(at, from.size(), to);
}

TEST(KeySignChoice, SaveLoadRoundTrip) {
  const KeySignChoice c = sample_choice();
  const TempFile file("round-trip.json");
  save_key_sign_choice(c, file.path());
  const KeySignChoice back = load_key_sign_choice(file.path());
  EXPECT_EQ(back.source, file.path());
  EXPECT_EQ(back.n_layers, c.n_layers);
  EXPECT_EQ(back.n_kv_heads, c.n_kv_heads);
  EXPECT_EQ(back.head_dim, c.head_dim);
  EXPECT_EQ(back.key_format, c.key_format);
  EXPECT_EQ(back.candidates, c.candidates);
  EXPECT_EQ(back.base_seed, c.base_seed);
  EXPECT_EQ(back.per_layer, c.per_layer);
  EXPECT_EQ(back.chosen, c.chosen);
  EXPECT_EQ(back.error_sq, c.error_sq);
  EXPECT_EQ(back.reference_sq, c.reference_sq);
  EXPECT_EQ(back.calibration_kv, c.calibration_kv);
  EXPECT_EQ(back.calibration_text, c.calibration_text);
  EXPECT_EQ(back.ctx, c.ctx);
  EXPECT_EQ(back.windows, c.windows);
  // Per layer, and without the informational errors.
  KeySignChoice layer = c;
  layer.per_layer = true;
  layer.chosen = {{2, 2}, {0, 0}, {3, 3}};
  layer.error_sq.clear();
  layer.reference_sq.clear();
  save_key_sign_choice(layer, file.path());
  const KeySignChoice layer_back = load_key_sign_choice(file.path());
  EXPECT_TRUE(layer_back.per_layer);
  EXPECT_EQ(layer_back.chosen, layer.chosen);
  EXPECT_TRUE(layer_back.error_sq.empty());
}

// The probe's measure from the saved sums: per layer sqrt(sum_h error / sum_h reference), and
// its mean over the layers.
TEST(KeySignChoice, MeanLayerErrorOfAnAssignment) {
  const KeySignChoice c = sample_choice();
  const double expected = (std::sqrt((1.5 + 0.25) / 30.0) + std::sqrt((1.0 + 0.5) / 70.0) +
                           std::sqrt((1.0 + 1.0) / 110.0)) / 3.0;
  EXPECT_DOUBLE_EQ(c.mean_layer_error(c.chosen), expected);
  EXPECT_DOUBLE_EQ(c.layer_error(1, {2, 1}), std::sqrt(1.5 / 70.0));
  EXPECT_THROW((void)c.layer_error(3, {0, 0}), Error);
  EXPECT_THROW((void)c.layer_error(0, {0}), Error);
  EXPECT_THROW((void)c.mean_layer_error({{0, 0}}), Error);
  const std::vector<std::vector<int>> plain(3, std::vector<int>(2, 0));
  EXPECT_DOUBLE_EQ(c.mean_layer_error(plain),
                   (std::sqrt(5.5 / 30.0) + std::sqrt(15.0 / 70.0) + std::sqrt(5.0 / 110.0)) / 3.0);
  KeySignChoice no_errors = c;
  no_errors.error_sq.clear();
  EXPECT_THROW((void)no_errors.mean_layer_error(c.chosen), Error);
}

// Unreadable, corrupt and inconsistent files are rejected with an error naming the file and
// the field.
TEST(KeySignChoice, BadFilesNameTheFileAndField) {
  EXPECT_EQ(load_error(edited("\"n_layers\": 3", "\"n_layers\": 3")), "no error");  // the sample loads
  {
    const std::string m = [] {
      try {
        (void)load_key_sign_choice("/nonexistent/dir/choice.json");
      } catch (const Error& e) {
        return std::string(e.what());
      }
      return std::string("no error");
    }();
    EXPECT_NE(m.find("cannot read key-sign file '/nonexistent/dir/choice.json'"), std::string::npos) << m;
  }
  EXPECT_NE(load_error("{\"kind\": ").find("not valid JSON"), std::string::npos);
  EXPECT_NE(load_error("").find("not valid JSON"), std::string::npos);
  EXPECT_NE(load_error("[1, 2]").find("not a JSON object"), std::string::npos);
  const std::pair<std::pair<const char*, const char*>, const char*> cases[] = {
      {{"\"kind\": \"tqkv key-sign choice\"", "\"kind\": \"other\""}, "'kind'"},
      {{"\"version\": 1", "\"version\": 2"}, "'version' is 2"},
      {{"\"n_layers\": 3,", ""}, "'n_layers' is missing"},
      {{"\"n_layers\": 3", "\"n_layers\": \"3\""}, "'n_layers' is \"3\", not an integer"},
      {{"\"n_kv_heads\": 2", "\"n_kv_heads\": 0"}, "'n_kv_heads' is 0"},
      {{"\"head_dim\": 32", "\"head_dim\": -32"}, "'head_dim' is -32"},
      {{"\"candidates\": 4", "\"candidates\": 257"}, "'candidates' is 257"},
      {{"\"key_format\": \"tq3\"", "\"key_format\": \"tq9\""}, "'key_format' is not a format"},
      {{"\"key_format\": \"tq3\"", "\"key_format\": \"f16\""}, "'key_format' is 'f16', not a quantized"},
      {{"\"base_seed\": 12345678901234", "\"base_seed\": -1"}, "'base_seed' is -1"},
      {{"\"granularity\": \"head\"", "\"granularity\": \"token\""}, "'granularity' is \"token\""},
      {{"[0,3]", "[0,4]"}, "'chosen[0][1]' is 4, not a candidate in [0, 4)"},
      {{"[2,1]", "[2,-1]"}, "'chosen[1][1]' is -1"},
      {{"[1,1]", "[1,1.5]"}, "'chosen[2][1]' is 1.5"},
      {{"[2,1]", "[2]"}, "'chosen[1]' must be an array of n_kv_heads = 2"},
      {{"  [0,3],\n", ""}, "'chosen' must be an array of n_layers = 3"},
      {{"\"n_layers\": 3", "\"n_layers\": 4"}, "'chosen' must be an array of n_layers = 4"},
      {{"\"chosen\"", "\"picked\""}, "'chosen' is missing"},
      {{"\"granularity\": \"head\"", "\"granularity\": \"layer\""}, "'chosen[0]' differs between KV heads"},
      {{"[1.5,2.0,3.0,4.0]", "[1.5,2.0,3.0]"}, "'error_sq[0][0]' must be an array of candidates = 4"},
      {{"[1.5,2.0,3.0,4.0]", "[1.5,2.0,null,4.0]"}, "'error_sq[0][0][2]' is null"},
      {{"[10.0,20.0]", "[10.0,-20.0]"}, "'reference_sq[0][1]' is -20.0"},
      {{"\"ctx\":1024", "\"ctx\":\"long\""}, "'calibration' needs"},
  };
  for (const auto& [edit, message] : cases) {
    const std::string m = load_error(edited(edit.first, edit.second));
    EXPECT_NE(m.find(message), std::string::npos) << edit.first << " -> " << edit.second << ": " << m;
  }
}

// with_key_sign_choice takes the layer's row and checks the file against the model and the spec.
TEST(KeySignChoice, AppliedOnlyToTheModelFormatAndSeedItWasMadeFor) {
  KeySignChoice c = sample_choice();
  c.source = "choice.json";
  KvSpec spec = parse_kv_spec("tq3-recent4");
  spec.rotation_seed = c.base_seed;
  for (int l = 0; l < 3; ++l) {
    EXPECT_EQ(with_key_sign_choice(spec, c, l, 3, 2, 32).key_sign_choice, c.chosen[l]);
  }
  KvSpec values_plain = parse_kv_spec("k3v2-noflipv");
  values_plain.rotation_seed = c.base_seed;
  EXPECT_EQ(with_key_sign_choice(values_plain, c, 1, 3, 2, 32).key_sign_choice, c.chosen[1]);
  auto error = [&](const KvSpec& s, int layer, int n_layers, int kv_heads, int head_dim) {
    try {
      (void)with_key_sign_choice(s, c, layer, n_layers, kv_heads, head_dim);
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("key-sign file 'choice.json'"), std::string::npos) << m;
      return m;
    }
    return std::string("no error");
  };
  EXPECT_NE(error(spec, 0, 4, 2, 32).find("'n_layers' is 3, but the model's layer count is 4"), std::string::npos);
  EXPECT_NE(error(spec, 0, 3, 3, 32).find("'n_kv_heads' is 2"), std::string::npos);
  EXPECT_NE(error(spec, 0, 3, 2, 64).find("'head_dim' is 32"), std::string::npos);
  EXPECT_NE(error(spec, 3, 3, 2, 32).find("no choice for layer 3"), std::string::npos);
  KvSpec tq2 = parse_kv_spec("tq2-recent4");
  tq2.rotation_seed = c.base_seed;
  EXPECT_NE(error(tq2, 0, 3, 2, 32).find("'key_format' is tq3, but the keys of 'tq2-recent4' (layer 0) are tq2"),
            std::string::npos);
  EXPECT_NE(error(parse_kv_spec("tq3"), 0, 3, 2, 32).find("'base_seed' is 12345678901234"), std::string::npos);
  for (const char* other : {"tq3-noflip", "tq3-noflipk", "tq3-keysigns4", "tq3-pairsignsk"}) {
    KvSpec s = parse_kv_spec(other);
    s.rotation_seed = c.base_seed;
    EXPECT_NE(error(s, 0, 3, 2, 32).find("already sets"), std::string::npos) << other;
  }
  EXPECT_NE(error(parse_kv_spec("q4_0"), 0, 3, 2, 32).find("need a tqkv format"), std::string::npos);
}

// A session whose specs come from a file with candidate 0 everywhere gives exactly the logits of
// -noflipk, with candidate 1 everywhere exactly those of the default signs.
TEST(KeySignChoice, FileOfOneCandidateEqualsTheMatchingSuffix) {
  const Tiny tiny;
  const LlamaConfig& cfg = tiny.model.config();
  const auto tokens = random_tokens(90, cfg.n_vocab, kSeed);
  for (const char* base : {"tq2", "tq2-recent8"}) {
    const KvSpec spec = parse_kv_spec(base);
    const auto plain = run(tiny.model, parse_kv_spec(std::string(base) + "-noflipk"), tokens, 64);
    const auto signs = run(tiny.model, spec, tokens, 64);
    EXPECT_GT(max_abs_diff(plain, signs), 1e-3f * max_abs(plain)) << base;
    for (int candidate : {0, 1}) {
      KeySignChoice c;
      c.n_layers = cfg.n_layers;
      c.n_kv_heads = cfg.n_head_kv;
      c.head_dim = cfg.head_dim;
      c.key_format = Format::tq2;
      c.candidates = 2;
      c.chosen.assign(static_cast<std::size_t>(cfg.n_layers),
                      std::vector<int>(static_cast<std::size_t>(cfg.n_head_kv), candidate));
      const TempFile file(std::string("one-candidate-") + std::to_string(candidate) + ".json");
      save_key_sign_choice(c, file.path());
      const KeySignChoice loaded = load_key_sign_choice(file.path());
      std::vector<KvSpec> specs;
      for (int l = 0; l < cfg.n_layers; ++l) {
        specs.push_back(with_key_sign_choice(spec, loaded, l, cfg.n_layers, cfg.n_head_kv, cfg.head_dim));
      }
      EXPECT_EQ(max_abs_diff(run(tiny.model, specs, tokens, 64), candidate == 0 ? plain : signs), 0.0f)
          << base << ", candidate " << candidate;
    }
  }
}

// The squared attention error of every shadow per (layer, KV head), measured beside exact
// attention by ErrorProbeStore; shadows_of(layer) gives each layer's shadows.
template <typename Shadows>
std::vector<std::vector<std::vector<double>>> probe_errors(const LlamaModel& m,
                                                           const std::vector<int>& tokens, int ctx,
                                                           int windows, Shadows shadows_of) {
  const LlamaConfig& c = m.config();
  LlamaSession session(m, KvSpec{KvKind::f32}, ctx);
  std::vector<const ErrorProbeStore*> probes;
  for (int l = 0; l < c.n_layers; ++l) {
    auto store = std::make_unique<ErrorProbeStore>(shadows_of(l), l, c.n_head_kv, c.head_dim, ctx, c.n_head);
    probes.push_back(store.get());
    session.set_layer_store(l, std::move(store));
  }
  for (int w = 0; w < windows; ++w) {
    session.reset();
    session.forward(tokens.data() + static_cast<std::size_t>(w) * ctx, ctx, nullptr, 0);
  }
  const int group = c.n_head / c.n_head_kv;
  std::vector<std::vector<std::vector<double>>> error(static_cast<std::size_t>(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    for (int h = 0; h < c.n_head_kv; ++h) {
      std::vector<double> per_shadow(shadows_of(l).size(), 0.0);
      for (std::size_t s = 0; s < per_shadow.size(); ++s) {
        for (int g = h * group; g < (h + 1) * group; ++g) per_shadow[s] += probes[l]->squared_error(static_cast<int>(s), g);
      }
      error[l].push_back(per_shadow);
    }
  }
  return error;
}

// Calibration on the tiny model: each (layer, KV head) takes the candidate of smallest error,
// and the errors it reports are those of a separate probe of the candidates. A probe with the
// chosen signs then has, on every KV head, the smallest error of all candidates (which catches a
// choice applied to the wrong head or layer).
TEST(KeySignChoice, CalibrationPicksTheSmallestErrorPerHead) {
  const Tiny tiny;
  const LlamaConfig& cfg = tiny.model.config();
  constexpr int kCtx = 96, kWindows = 2, kCandidates = 4;
  const auto tokens = random_tokens(kCtx * kWindows + 5, cfg.n_vocab, kSeed + 1);
  const KvSpec kv = parse_kv_spec("tq2-recent8");
  const KeySignChoice c = calibrate_key_signs(tiny.model, kv, tokens, kCtx, kWindows, kCandidates, false);
  EXPECT_EQ(c.n_layers, cfg.n_layers);
  EXPECT_EQ(c.n_kv_heads, cfg.n_head_kv);
  EXPECT_EQ(c.head_dim, cfg.head_dim);
  EXPECT_EQ(c.key_format, Format::tq2);
  EXPECT_EQ(c.candidates, kCandidates);
  EXPECT_EQ(c.base_seed, kv.rotation_seed);
  EXPECT_EQ(c.calibration_kv, "tq2-recent8");
  EXPECT_EQ(c.ctx, kCtx);
  EXPECT_EQ(c.windows, kWindows);
  // The candidates as separate stores: k2v16 with one candidate on every head.
  auto candidate_specs = [&](int) {
    std::vector<KvSpec> shadows;
    for (int k = 0; k < kCandidates; ++k) {
      KvSpec s = parse_kv_spec("k2v16-recent8");
      s.key_sign_choice.assign(static_cast<std::size_t>(cfg.n_head_kv), k);
      shadows.push_back(s);
    }
    return shadows;
  };
  const auto separate = probe_errors(tiny.model, tokens, kCtx, kWindows, candidate_specs);
  ASSERT_EQ(c.error_sq.size(), separate.size());
  int differing = 0;
  for (int l = 0; l < cfg.n_layers; ++l) {
    for (int h = 0; h < cfg.n_head_kv; ++h) {
      const auto& e = c.error_sq[l][h];
      for (int k = 0; k < kCandidates; ++k) EXPECT_DOUBLE_EQ(e[k], separate[l][h][k]) << l << " " << h << " " << k;
      EXPECT_EQ(c.chosen[l][h], std::min_element(e.begin(), e.end()) - e.begin()) << l << " " << h;
      EXPECT_GT(c.reference_sq[l][h], 0.0);
      differing += *std::max_element(e.begin(), e.end()) > 1.01 * *std::min_element(e.begin(), e.end());
    }
  }
  EXPECT_GT(differing, 0) << "the candidates all give the same error: the choice is not tested";
  // The chosen signs, through the file path, against every candidate on each KV head.
  const TempFile file("calibrated.json");
  save_key_sign_choice(c, file.path());
  const KeySignChoice loaded = load_key_sign_choice(file.path());
  const auto with_choice = probe_errors(tiny.model, tokens, kCtx, kWindows, [&](int l) {
    return std::vector<KvSpec>{with_key_sign_choice(parse_kv_spec("k2v16-recent8"), loaded, l,
                                                    cfg.n_layers, cfg.n_head_kv, cfg.head_dim)};
  });
  for (int l = 0; l < cfg.n_layers; ++l) {
    for (int h = 0; h < cfg.n_head_kv; ++h) {
      const auto& e = separate[l][h];
      EXPECT_DOUBLE_EQ(with_choice[l][h][0], *std::min_element(e.begin(), e.end())) << l << " " << h;
    }
  }
  EXPECT_LE(loaded.mean_layer_error(loaded.chosen),
            loaded.mean_layer_error(std::vector<std::vector<int>>(c.chosen.size(), std::vector<int>(c.chosen[0].size(), 0))));
}

// Per layer: one candidate for all KV heads, the one of smallest error summed over them; one
// candidate: always the plain Hadamard.
TEST(KeySignChoice, CalibrationPerLayerAndWithOneCandidate) {
  const Tiny tiny;
  const LlamaConfig& cfg = tiny.model.config();
  const auto tokens = random_tokens(80, cfg.n_vocab, kSeed + 2);
  const KeySignChoice c = calibrate_key_signs(tiny.model, parse_kv_spec("tq2"), tokens, 80, 1, 3, true);
  EXPECT_TRUE(c.per_layer);
  for (int l = 0; l < cfg.n_layers; ++l) {
    std::vector<double> sum(3, 0.0);
    for (const auto& e : c.error_sq[l]) {
      for (int k = 0; k < 3; ++k) sum[k] += e[k];
    }
    const int best = static_cast<int>(std::min_element(sum.begin(), sum.end()) - sum.begin());
    EXPECT_EQ(c.chosen[l], std::vector<int>(static_cast<std::size_t>(cfg.n_head_kv), best)) << l;
  }
  const KeySignChoice one = calibrate_key_signs(tiny.model, parse_kv_spec("tq2"), tokens, 80, 1, 1, false);
  for (const auto& row : one.chosen) EXPECT_EQ(row, std::vector<int>(static_cast<std::size_t>(cfg.n_head_kv), 0));
}

TEST(KeySignChoice, CalibrationRejectsBadRequests) {
  const Tiny tiny;
  const auto tokens = random_tokens(64, tiny.model.config().n_vocab, kSeed + 3);
  auto error = [&](const char* kv, int ctx, int windows, int candidates) {
    try {
      (void)calibrate_key_signs(tiny.model, parse_kv_spec(kv), tokens, ctx, windows, candidates, false);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error("f16", 32, 1, 2).find("no quantized keys"), std::string::npos);
  EXPECT_NE(error("kf16v2", 32, 1, 2).find("no quantized keys"), std::string::npos);
  EXPECT_NE(error("q4_0", 32, 1, 2).find("no quantized keys"), std::string::npos);
  EXPECT_NE(error("tq2-noflip", 32, 1, 2).find("set by '-noflip'"), std::string::npos);
  EXPECT_NE(error("tq2-keysigns4", 32, 1, 2).find("set by '-keysigns'"), std::string::npos);
  EXPECT_NE(error("tq2", 32, 1, 0).find("candidates 0"), std::string::npos);
  EXPECT_NE(error("tq2", 32, 1, 257).find("candidates 257"), std::string::npos);
  EXPECT_NE(error("tq2", 0, 1, 2).find("ctx 0"), std::string::npos);
  EXPECT_NE(error("tq2", 40, 2, 2).find("64 tokens are fewer than 2 windows of 40"), std::string::npos);
}

}  // namespace
}  // namespace tqkv::model
