// Per-layer KV storage behind the model's attention: tqkv caches (the thing under test) and
// baselines that fake-quantize K/V in float (quantize, dequantize, keep the result) so that
// their quality can be compared at equal bits.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tqkv/attention.hpp"
#include "tqkv/cache.hpp"
#include "tqkv/format.hpp"

namespace tqkv::model {

enum class KvKind : uint8_t {
  tqkv,   // tqkv::KvCache + tqkv::decode_attention (f16, tq2..tq8, k8v4, ...)
  f32,    // unquantized float, the model's own attention (a sanity check for f16)
  q4_0,   // llama.cpp q4_0 on K and V: blocks of 32, fp16 scale d, x = d * (q - 8)
  kivi2,  // KIVI 2-bit: keys per channel over groups of kKiviGroup tokens (the newest,
          // incomplete group stays unquantized), values per token over groups of kKiviGroup
          // coordinates; affine with fp16 scale and minimum
};

// Group size of the KIVI-2 baseline, for keys (tokens) and values (coordinates) alike: with an
// fp16 scale and an fp16 minimum per group it costs 2 + 32/64 = 2.5 bits per coordinate, the
// same as tq2 at head_dim 64 (2 bits + one fp32 scale per 64 coordinates).
inline constexpr int kKiviGroup = 64;

// Which key coordinates share one random sign (KvSpec::key_sign_tie).
enum class KeySignTie : uint8_t {
  none,            // the cache's independent signs
  adjacent_pairs,  // 2i and 2i+1: the runtime's RoPE pairs ("-pairsignsk")
  half_pairs,      // i and i + head_dim/2: pairs this model's RoPE does not use ("-halfsignsk")
};

struct KvSpec {
  KvKind kind = KvKind::tqkv;
  KvFormat format{Format::f16, Format::f16};  // kind == tqkv only
  // Random signs before the Hadamard, per side (kind == tqkv only). Suffix "-noflip" turns
  // both off (the seed design's plain Hadamard), "-noflipk" the keys' only, "-noflipv" the
  // values' only. The library shares one rotation between K and V, so a store with one side
  // flipped runs a cache without signs and applies that side's signs itself: k and q (or v and
  // the output) are multiplied by the same diagonal the cache would draw, which leaves q.k and
  // the output unchanged in exact arithmetic and costs no bytes.
  bool key_sign_flips = true;
  bool value_sign_flips = true;
  // Key signs tied per pair (kind == tqkv): both coordinates of a pair take the sign that the
  // cache's own draw gives the first one. "-pairsignsk" ties the RoPE pairs (2i, 2i+1): the
  // Sylvester Hadamard's even outputs mix only pair sums a + b and its odd outputs only pair
  // differences a - b; tied signs keep that split, independent signs mix the two.
  // "-halfsignsk" ties (i, i + head_dim/2) instead, which keeps the split of the Hadamard's
  // top bit: as many free signs, but not this model's RoPE pairs (a control). Applied by the
  // store to k and q as for "-noflipk"; the values keep the default signs; no bytes.
  KeySignTie key_sign_tie = KeySignTie::none;
  // Key signs chosen per (layer, KV head) from this many candidates (name suffix "-keysignsN";
  // kind == tqkv, 0 = off): the plain Hadamard and the draws of base seeds rotation_seed + 0,
  // + 1, ..., + N - 2. The choice is the one whose quantized keys of the first chunk of a window
  // give the smallest squared logit error over that chunk's queries; the chunk is held until its
  // queries arrive, as for smoothing. The values keep the default draw. A real cache would store
  // the choice, one byte per KV head and layer.
  int key_sign_candidates = 0;
  // Key signs fixed per KV head of this layer (kind == tqkv; empty = off): entry h is the
  // -keysignsN candidate for KV head h (0: the plain Hadamard; c >= 1: the draw of base seed
  // rotation_seed + c - 1, so 1 is the default signs), chosen offline on a calibration text
  // (calibrate_key_signs in llama.hpp, read back from a file by with_key_sign_choice). Applied to
  // k and q as -keysignsN applies its choice; values keep the default draw. One byte per KV head
  // and layer. Not part of kv_spec_name: the choice comes from a file, not from the name.
  std::vector<int> key_sign_choice{};
  uint64_t rotation_seed = kDefaultSeed;      // kind == tqkv only: base seed of the random signs
  ScaleRule scale_rule = kDefaultScaleRule;    // kind == tqkv only
  CodebookKind codebook = CodebookKind::gaussian;
  Backend backend = Backend::automatic;       // kind == tqkv: where decode_attention runs
  // Subtract a per-(layer, KV head) key mean before caching. Softmax is invariant to adding
  // q.mu to every logit of a query, so attention is unchanged in exact arithmetic, but the common
  // component of the keys (large on real models, see docs/real-model.md) no longer takes up the
  // quantizer's range. The mean is that of the first appended chunk, then frozen (changing it
  // later would shift old and new logits differently). Any kind; name suffix "-center".
  bool center_keys = false;
  // Per-channel key smoothing (name suffix "-smooth"): k' = k / s and q' = q * s per channel of
  // each KV head, which leaves every q.k unchanged. s_c = (E[k_c^2] / E[q_c^2])^(1/4) balances
  // the two sides: a key channel that is large where the queries are small (outlier channels of
  // real models) is shrunk before the rotation spreads its quantization error over all
  // channels. Calibrated on the first chunk of each window (its keys and the queries of its
  // KV head's query group), then frozen. Any kind.
  bool smooth_keys = false;
  // The newest `recent_window` tokens' K and V are also held in f16 and attended exactly; older
  // tokens come from the tqkv cache, and the two parts are combined by their log-sum-exp (exact
  // softmax over both). Name suffix "-recentN". kind == tqkv only; 0 = off.
  int recent_window = 0;
};

// "f32", "q4_0", "kivi2" or any tqkv::parse_kv_format name ("f16", "tq4", "k8v4", ...),
// followed by option suffixes in any order, each at most once: "-noflip", "-noflipk", "-noflipv"
// (tqkv: no random signs on both sides, on the keys, on the values), "-pairsignsk" /
// "-halfsignsk" (tqkv: key signs tied per pair; one of them, not with -noflip, -noflipk or
// -keysignsN), "-keysignsN" (tqkv: key_sign_candidates = N, 1..256), "-center" (center_keys),
// "-smooth" (smooth_keys), "-recentN" (tqkv: recent_window = N > 0). Throws Error naming the
// text and the faulty part.
KvSpec parse_kv_spec(std::string_view text);
// The canonical name: base, then -noflip (or -noflipk / -noflipv), -pairsignsk or -halfsignsk,
// -smooth, -center, -keysignsN, -recentN.
std::string kv_spec_name(const KvSpec& spec);
// The option of `spec` that already sets its key signs ("-noflip", "-noflipk", "-keysigns",
// "-pairsignsk", "-halfsignsk"), or "" where none does, so that a fixed key_sign_choice may be
// set on it.
std::string_view key_sign_option(const KvSpec& spec);
// Bytes one position of one KV head costs in the format (K and V; scales included; amortised
// per-channel KIVI scales). tqkv formats use tqkv::kv_bytes_per_position.
double kv_spec_bytes_per_position(const KvSpec& spec, int head_dim);
// Bytes of one KV head in one layer that do not grow with the context: the f16 recent window
// (recent_window x K and V), the fp32 mean of centering and the fp32 factors of smoothing
// (head_dim floats each), the byte of the key-sign choice (-keysignsN or key_sign_choice), and KIVI-2's unquantized newest key
// group (at most kKiviGroup - 1 f16 keys). Amortised over a context of T tokens they add
// fixed / T per position.
double kv_spec_fixed_bytes(const KvSpec& spec, int head_dim);

// The most key-sign candidates (-keysignsN, KeySignChoice): the index of the chosen one fits one byte.
inline constexpr int kMaxKeySignCandidates = 256;

// A choice of key signs per (layer, KV head) among the -keysignsN candidates, as a calibration
// run saves it (JSON, save_key_sign_choice) and --key-signs reads it back.
struct KeySignChoice {
  // The model and the key format it was calibrated for; candidate c >= 1 draws base seed
  // base_seed + c - 1 (KvSpec::rotation_seed), c = 0 is the plain Hadamard.
  int n_layers = 0, n_kv_heads = 0, head_dim = 0;
  Format key_format = Format::tq2;
  int candidates = 0;
  uint64_t base_seed = kDefaultSeed;
  bool per_layer = false;                // one candidate for all KV heads of a layer
  std::vector<std::vector<int>> chosen;  // [layer][kv_head], each in [0, candidates)
  // What the choice was measured on (informational): the squared error of the attention output
  // of every candidate, summed over the KV head's query heads and all positions,
  // [layer][kv_head][candidate], and that of the exact output, [layer][kv_head]; the KV format
  // the candidates were derived from, the text, the window and the number of windows.
  std::vector<std::vector<std::vector<double>>> error_sq;
  std::vector<std::vector<double>> reference_sq;
  std::string calibration_kv, calibration_text;
  int ctx = 0, windows = 0;
  std::string source;  // the file it was read from (for messages); not saved

  // The relative RMS attention error of layer l when KV head h takes candidate a[h],
  // sqrt(sum_h error_sq[l][h][a[h]] / sum_h reference_sq[l][h]), the probe's measure
  // (--probe-error); and its mean over the layers for an assignment [layer][kv_head] (e.g.
  // `chosen`, or one candidate everywhere). Need error_sq.
  double layer_error(int layer, const std::vector<int>& a) const;
  double mean_layer_error(const std::vector<std::vector<int>>& assignment) const;
};

// Writes `choice` as JSON to `path`; throws Error(io_error) naming the file.
void save_key_sign_choice(const KeySignChoice& choice, const std::string& path);
// Reads a file written by save_key_sign_choice and checks it: valid JSON, every field present
// with its type, counts positive, `chosen` of n_layers x n_kv_heads candidates in
// [0, candidates), error_sq / reference_sq (if given) of the same shape. Throws Error naming the
// file and the field.
KeySignChoice load_key_sign_choice(const std::string& path);
// `spec` for layer `layer` of a model with n_layers, kv_heads and head_dim, with the file's
// choice for that layer set as key_sign_choice. Throws Error naming the file and the field when
// the file was calibrated for another model shape, key format or base seed, or when the spec
// cannot take key signs (not tqkv, or key signs set by another option).
KvSpec with_key_sign_choice(const KvSpec& spec, const KeySignChoice& choice, int layer,
                            int n_layers, int kv_heads, int head_dim);

class KvStore {
 public:
  virtual ~KvStore() = default;
  // Appends n tokens: k, v [n][kv_heads][head_dim].
  virtual void append(const float* k, const float* v, int n) = 0;
  // Attention of the last n appended tokens, token i seeing positions [0, length - n + i]:
  // q [n][q_heads][head_dim] -> out [n][q_heads][head_dim]. Scale 1/sqrt(head_dim).
  virtual void attend(const float* q, int n, int q_heads, float* out) = 0;
  virtual int64_t length() const = 0;
  virtual void reset() = 0;
};

std::unique_ptr<KvStore> make_kv_store(const KvSpec& spec, int layer, int kv_heads, int head_dim,
                                       int capacity);

// A diagnostic store: attends with an exact float store (whose output the model uses, so every
// layer sees the same activations) and, on the same K/V/q, with each of `shadows`, accumulating
// the squared error of each shadow's attention output per query head.
class ErrorProbeStore final : public KvStore {
 public:
  ErrorProbeStore(const std::vector<KvSpec>& shadows, int layer, int kv_heads, int head_dim,
                  int capacity, int q_heads);
  void append(const float* k, const float* v, int n) override;
  void attend(const float* q, int n, int q_heads, float* out) override;
  int64_t length() const override { return exact_->length(); }
  void reset() override;
  // Relative RMS error of shadow s's output over everything attended: sqrt(sum err^2 / sum o^2),
  // for one query head or (head = -1) all of them.
  double relative_error(int shadow, int head = -1) const;
  // The sums behind it for one query head: squared error of shadow s's output, and squared
  // exact output.
  double squared_error(int shadow, int head) const;
  double reference_square(int head) const { return ref_sq_[static_cast<std::size_t>(head)]; }

 private:
  std::unique_ptr<KvStore> exact_;
  std::vector<std::unique_ptr<KvStore>> shadows_;
  int head_dim_, q_heads_;
  std::vector<double> err_sq_;  // [shadow][q_head]
  std::vector<double> ref_sq_;  // [q_head]
  std::vector<float> scratch_;
};

// Fake quantization of one vector (exposed for tests): q4_0 blocks of 32 (n a multiple of 32),
// and the KIVI affine 2-bit rule over one group (stride between elements in floats).
void fake_quant_q4_0(const float* x, float* y, int n);
void fake_quant_affine2(const float* x, float* y, int n, int stride);

}  // namespace tqkv::model
