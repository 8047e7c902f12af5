#include "tokenizer.hpp"

#include <algorithm>
#include <array>
#include <climits>

#include <fmt/format.h>

#include "gguf.hpp"
#include "tqkv/error.hpp"

namespace tqkv::model {
namespace {

// GGUF token types (llama.cpp numbering): control and user-defined tokens are matched as whole
// strings when special parsing is on.
constexpr int64_t kTokenControl = 3;
constexpr int64_t kTokenUserDefined = 4;

struct CodePoint {
  uint32_t cp;
  std::size_t begin, end;  // byte range in the text
};

// Decodes UTF-8; an invalid byte becomes its own code point U+FFFD-like symbol (kept as 1 byte).
std::vector<CodePoint> decode_utf8(std::string_view s) {
  std::vector<CodePoint> out;
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1Fu) : len == 3 ? (c & 0x0Fu) : (c & 0x07u);
    bool ok = len > 0 && i + static_cast<std::size_t>(len) <= s.size();
    for (int k = 1; ok && k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + static_cast<std::size_t>(k)]);
      ok = (cc & 0xC0) == 0x80;
      cp = (cp << 6) | (cc & 0x3Fu);
    }
    if (!ok) {
      out.push_back({0xFFFD, i, i + 1});
      ++i;
      continue;
    }
    out.push_back({cp, i, i + static_cast<std::size_t>(len)});
    i += static_cast<std::size_t>(len);
  }
  return out;
}

void append_utf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

struct Range {
  uint32_t lo, hi;
};
bool in_ranges(uint32_t cp, std::initializer_list<Range> ranges) {
  for (const Range& r : ranges) {
    if (cp >= r.lo && cp <= r.hi) return true;
  }
  return false;
}

// \s in the Unicode sense (White_Space property).
bool is_space(uint32_t cp) {
  return in_ranges(cp, {{0x09, 0x0D}, {0x20, 0x20}, {0x85, 0x85}, {0xA0, 0xA0}, {0x1680, 0x1680},
                        {0x2000, 0x200A}, {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F},
                        {0x3000, 0x3000}});
}
// \p{N}, approximated: ASCII, Latin-1 superscripts and fractions, Arabic-Indic, number forms,
// full-width digits.
bool is_number(uint32_t cp) {
  return in_ranges(cp, {{'0', '9'}, {0xB2, 0xB3}, {0xB9, 0xB9}, {0xBC, 0xBE}, {0x660, 0x669},
                        {0x6F0, 0x6F9}, {0x966, 0x96F}, {0x2070, 0x2070}, {0x2074, 0x2079},
                        {0x2080, 0x2089}, {0x2150, 0x2189}, {0x2460, 0x249B}, {0xFF10, 0xFF19}});
}
// \p{L}, approximated by the letter blocks of the common scripts.
bool is_letter(uint32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return in_ranges(cp, {{0xAA, 0xAA}, {0xB5, 0xB5}, {0xBA, 0xBA}, {0xC0, 0xD6}, {0xD8, 0xF6},
                        {0xF8, 0x2C1}, {0x2C6, 0x2D1}, {0x2E0, 0x2E4}, {0x370, 0x373},
                        {0x376, 0x377}, {0x37B, 0x37D}, {0x386, 0x386}, {0x388, 0x3F5},
                        {0x3F7, 0x481}, {0x48A, 0x52F}, {0x531, 0x556}, {0x561, 0x587},
                        {0x5D0, 0x5EA}, {0x620, 0x64A}, {0x671, 0x6D3}, {0x904, 0x939},
                        {0xE01, 0xE30}, {0x10A0, 0x10FF}, {0x1E00, 0x1FBC}, {0x1FC2, 0x1FCC},
                        {0x1FD0, 0x1FDB}, {0x1FE0, 0x1FEC}, {0x1FF2, 0x1FFC}, {0x3041, 0x3096},
                        {0x30A1, 0x30FA}, {0x3400, 0x4DBF}, {0x4E00, 0x9FFF}, {0xAC00, 0xD7A3},
                        {0xF900, 0xFAFF}, {0xFF21, 0xFF3A}, {0xFF41, 0xFF5A}});
}

// GPT-2's reversible map from bytes to printable code points: printable Latin-1 bytes map to
// themselves, the other 68 bytes to U+0100 onwards in byte order.
struct ByteMap {
  std::array<uint32_t, 256> to_cp{};
  std::array<std::string, 256> to_utf8;
  std::unordered_map<uint32_t, uint8_t> to_byte;
  ByteMap() {
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      to_cp[b] = printable ? b : next++;
      append_utf8(to_cp[b], to_utf8[b]);
      to_byte[to_cp[b]] = static_cast<uint8_t>(b);
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap map;
  return map;
}

// Splits one digit-free segment [b, e) of code points with the GPT-2 pattern.
void split_segment(const std::vector<CodePoint>& cps, std::size_t b, std::size_t e,
                   std::string_view text, std::vector<std::string_view>& out) {
  auto emit = [&](std::size_t from, std::size_t to) {
    out.push_back(text.substr(cps[from].begin, cps[to - 1].end - cps[from].begin));
  };
  std::size_t i = b;
  while (i < e) {
    const uint32_t c = cps[i].cp;
    // 's 't 're 've 'm 'll 'd (lowercase only, as in the pattern).
    if (c == '\'' && i + 1 < e) {
      const uint32_t n1 = cps[i + 1].cp;
      const uint32_t n2 = i + 2 < e ? cps[i + 2].cp : 0;
      std::size_t len = 0;
      if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd') len = 2;
      else if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) len = 3;
      if (len > 0) {
        emit(i, i + len);
        i += len;
        continue;
      }
    }
    // An optional single ASCII space, then a run of letters, of digits, or of other symbols.
    const std::size_t j = (c == ' ' && i + 1 < e) ? i + 1 : i;
    const uint32_t cj = cps[j].cp;
    if (!is_space(cj)) {
      auto same_class = is_letter(cj)   ? +[](uint32_t x) { return is_letter(x); }
                        : is_number(cj) ? +[](uint32_t x) { return is_number(x); }
                                        : +[](uint32_t x) {
                                            return !is_space(x) && !is_letter(x) && !is_number(x);
                                          };
      std::size_t k = j + 1;
      while (k < e && same_class(cps[k].cp)) ++k;
      emit(i, k);
      i = k;
      continue;
    }
    // Whitespace: \s+(?!\S) leaves the last space for the following word; a lone space before a
    // non-space falls through to \s+.
    std::size_t k = i;
    while (k < e && is_space(cps[k].cp)) ++k;
    if (k < e && k - i > 1) --k;
    emit(i, k);
    i = k;
  }
}

}  // namespace

std::vector<std::string_view> Tokenizer::split(std::string_view text) {
  std::vector<std::string_view> out;
  const std::vector<CodePoint> cps = decode_utf8(text);
  std::size_t seg = 0;
  for (std::size_t i = 0; i <= cps.size(); ++i) {
    if (i < cps.size() && !is_number(cps[i].cp)) continue;
    // Digits are isolated first (Digits(individual_digits)); the rest goes through the pattern.
    if (seg < i) split_segment(cps, seg, i, text, out);
    if (i < cps.size()) out.push_back(text.substr(cps[i].begin, cps[i].end - cps[i].begin));
    seg = i + 1;
  }
  return out;
}

Tokenizer::Tokenizer(const GgufFile& file) {
  const std::string& model = file.get_string("tokenizer.ggml.model");
  if (model != "gpt2") {
    raise(Status::unsupported,
          fmt::format("tokenizer.ggml.model '{}' is not supported (only byte-level BPE 'gpt2')",
                      model));
  }
  tokens_ = file.get_string_array("tokenizer.ggml.tokens");
  const std::vector<std::string>& merges = file.get_string_array("tokenizer.ggml.merges");
  if (file.has("tokenizer.ggml.token_type")) token_types_ = file.get_int_array("tokenizer.ggml.token_type");
  bos_ = static_cast<int>(std::min<uint64_t>(file.get_uint("tokenizer.ggml.bos_token_id", UINT32_MAX), INT_MAX));
  eos_ = static_cast<int>(std::min<uint64_t>(file.get_uint("tokenizer.ggml.eos_token_id", UINT32_MAX), INT_MAX));
  unk_ = static_cast<int>(std::min<uint64_t>(file.get_uint("tokenizer.ggml.unknown_token_id", UINT32_MAX), INT_MAX));
  for (std::size_t r = 0; r < merges.size(); ++r) merge_ranks_.emplace(merges[r], static_cast<int>(r));
  build();
}

Tokenizer::Tokenizer(std::vector<std::string> tokens, const std::vector<std::string>& merges,
                     std::vector<int64_t> token_types, int bos, int eos, int unk)
    : tokens_(std::move(tokens)), token_types_(std::move(token_types)), bos_(bos), eos_(eos),
      unk_(unk) {
  for (std::size_t r = 0; r < merges.size(); ++r) merge_ranks_.emplace(merges[r], static_cast<int>(r));
  build();
}

void Tokenizer::build() {
  if (tokens_.empty()) raise(Status::io_error, "tokenizer: the vocabulary is empty");
  if (!token_types_.empty() && token_types_.size() != tokens_.size()) {
    raise(Status::io_error, fmt::format("tokenizer: {} token types for {} tokens",
                                        token_types_.size(), tokens_.size()));
  }
  if (bos_ >= vocab_size()) bos_ = -1;
  if (eos_ >= vocab_size()) eos_ = -1;
  if (unk_ >= vocab_size()) unk_ = -1;
  for (std::size_t id = 0; id < tokens_.size(); ++id) {
    token_ids_.emplace(tokens_[id], static_cast<int>(id));
    const int64_t type = token_types_.empty() ? 1 : token_types_[id];
    if ((type == kTokenControl || type == kTokenUserDefined) && !tokens_[id].empty()) {
      specials_.emplace_back(tokens_[id], static_cast<int>(id));
    }
  }
  std::sort(specials_.begin(), specials_.end(),
            [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
}

int Tokenizer::token_id(std::string_view token_text) const {
  auto it = token_ids_.find(std::string(token_text));
  return it == token_ids_.end() ? -1 : it->second;
}

void Tokenizer::encode_piece(std::string_view piece, std::vector<int>& out) const {
  auto cached = cache_.find(std::string(piece));
  if (cached != cache_.end()) {
    out.insert(out.end(), cached->second.begin(), cached->second.end());
    return;
  }
  const ByteMap& map = byte_map();
  std::vector<std::string> symbols;
  symbols.reserve(piece.size());
  for (char ch : piece) symbols.push_back(map.to_utf8[static_cast<unsigned char>(ch)]);
  // Merge the adjacent pair of lowest rank until none is in the merge table.
  std::string key;
  while (symbols.size() > 1) {
    int best_rank = INT_MAX;
    std::size_t best = 0;
    for (std::size_t i = 0; i + 1 < symbols.size(); ++i) {
      key.assign(symbols[i]).append(" ").append(symbols[i + 1]);
      auto it = merge_ranks_.find(key);
      if (it != merge_ranks_.end() && it->second < best_rank) {
        best_rank = it->second;
        best = i;
      }
    }
    if (best_rank == INT_MAX) break;
    symbols[best] += symbols[best + 1];
    symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }
  std::vector<int> ids;
  for (const std::string& s : symbols) {
    auto it = token_ids_.find(s);
    if (it != token_ids_.end()) {
      ids.push_back(it->second);
      continue;
    }
    // A merge result missing from the vocabulary: fall back to its bytes. Vocabularies may lack
    // bytes that never occur in valid UTF-8 text (SmolLM2 lacks 0xC0, 0xF5..0xFF and some
    // control bytes); those become the unknown token, as in llama.cpp.
    for (const CodePoint& c : decode_utf8(s)) {
      auto byte = map.to_byte.find(c.cp);
      auto id = byte == map.to_byte.end() ? token_ids_.end() : token_ids_.find(map.to_utf8[byte->second]);
      if (id != token_ids_.end()) {
        ids.push_back(id->second);
      } else if (unk_ >= 0) {
        ids.push_back(unk_);
      } else {
        raise(Status::invalid_argument,
              fmt::format("tokenizer: byte 0x{:02x} has no token and the vocabulary has no "
                          "unknown token", byte == map.to_byte.end() ? 0 : byte->second));
      }
    }
  }
  out.insert(out.end(), ids.begin(), ids.end());
  cache_.emplace(std::string(piece), std::move(ids));
}

std::vector<int> Tokenizer::encode(std::string_view text, bool parse_special) const {
  std::vector<int> out;
  auto encode_plain = [&](std::string_view part) {
    for (std::string_view piece : split(part)) encode_piece(piece, out);
  };
  if (!parse_special || specials_.empty()) {
    encode_plain(text);
    return out;
  }
  std::size_t start = 0, i = 0;
  while (i < text.size()) {
    const std::pair<std::string, int>* hit = nullptr;
    for (const auto& sp : specials_) {
      if (text.compare(i, sp.first.size(), sp.first) == 0) {
        hit = &sp;
        break;
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    encode_plain(text.substr(start, i - start));
    out.push_back(hit->second);
    i += hit->first.size();
    start = i;
  }
  encode_plain(text.substr(start));
  return out;
}

std::string Tokenizer::decode_token(int id) const {
  if (id < 0 || id >= vocab_size()) {
    raise(Status::out_of_range, fmt::format("tokenizer: token id {} not in [0, {})", id, vocab_size()));
  }
  const std::string& text = tokens_[static_cast<std::size_t>(id)];
  const int64_t type = token_types_.empty() ? 1 : token_types_[static_cast<std::size_t>(id)];
  if (type == kTokenControl || type == kTokenUserDefined) return text;
  std::string out;
  const ByteMap& map = byte_map();
  for (const CodePoint& c : decode_utf8(text)) {
    auto it = map.to_byte.find(c.cp);
    if (it != map.to_byte.end()) {
      out += static_cast<char>(it->second);
    } else {
      out.append(text, c.begin, c.end - c.begin);
    }
  }
  return out;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  std::string out;
  for (int id : ids) out += decode_token(id);
  return out;
}

}  // namespace tqkv::model
