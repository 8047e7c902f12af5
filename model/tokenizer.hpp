// Byte-level BPE tokenizer (GPT-2 style) built from a GGUF file's vocabulary and merges.
//
// Pre-tokenization follows what tokenizer.ggml.pre = "smollm" means in llama.cpp (the same as
// the Hugging Face tokenizer of SmolLM2: Digits(individual) then the GPT-2 ByteLevel regex):
//   1. every digit is its own piece;
//   2. the rest is split by  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// implemented by hand (no regex engine): letters and digits are classified by a table of Unicode
// ranges (see tokenizer.cpp) that covers Latin, Greek, Cyrillic, Arabic, Hebrew, CJK, kana and
// Hangul letters and ASCII digits; other scripts' letters count as symbols, which only matters
// for text in those scripts.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace tqkv::model {

class GgufFile;

// encode() memoizes pieces in a cache: one Tokenizer must not encode from two threads at once.
class Tokenizer {
 public:
  // Reads tokenizer.ggml.{model,tokens,merges,token_type,bos/eos/unknown_token_id}. Throws
  // Error(unsupported) for a model other than "gpt2" and Error(io_error) for malformed tables.
  explicit Tokenizer(const GgufFile& file);
  Tokenizer(std::vector<std::string> tokens, const std::vector<std::string>& merges,
            std::vector<int64_t> token_types, int bos, int eos, int unk = -1);

  // With parse_special, the text of control tokens (e.g. "<|im_start|>") maps to their ids;
  // otherwise it is tokenized as plain text.
  std::vector<int> encode(std::string_view text, bool parse_special = false) const;
  std::string decode(const std::vector<int>& ids) const;
  std::string decode_token(int id) const;  // control tokens decode to their own text

  int vocab_size() const { return static_cast<int>(tokens_.size()); }
  int bos() const { return bos_; }
  int eos() const { return eos_; }
  int token_id(std::string_view token_text) const;  // -1 when absent

  // The pre-tokenizer alone (exposed for tests): pieces of `text` in order, concatenating to it.
  static std::vector<std::string_view> split(std::string_view text);

 private:
  void build();
  void encode_piece(std::string_view piece, std::vector<int>& out) const;

  std::vector<std::string> tokens_;
  std::vector<int64_t> token_types_;
  std::unordered_map<std::string, int> token_ids_;
  std::unordered_map<std::string, int> merge_ranks_;  // "left right" -> rank
  std::vector<std::pair<std::string, int>> specials_;  // control tokens, longest first
  int bos_ = -1, eos_ = -1, unk_ = -1;
  mutable std::unordered_map<std::string, std::vector<int>> cache_;
};

}  // namespace tqkv::model
