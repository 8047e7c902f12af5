// The byte-level BPE tokenizer: the pre-tokenizer's pieces, merges by rank, byte fallback,
// special tokens, and (when the real model is present) ids from Hugging Face `tokenizers`.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "gguf.hpp"
#include "gguf_writer.hpp"
#include "tokenizer.hpp"
#include "tqkv/error.hpp"

namespace tqkv::model {
namespace {

std::vector<std::string> pieces(std::string_view text) {
  std::vector<std::string> out;
  for (auto p : Tokenizer::split(text)) out.emplace_back(p);
  return out;
}
using V = std::vector<std::string>;

// Expected pieces worked out from the pattern (and confirmed with Hugging Face `tokenizers`)
// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ after isolating digits.
TEST(PreTokenizer, GptPattern) {
  EXPECT_EQ(pieces("Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(pieces("I'm here, they'll go"), (V{"I", "'m", " here", ",", " they", "'ll", " go"}));
  EXPECT_EQ(pieces("a  b"), (V{"a", " ", " b"}));          // \s+(?!\S) leaves one space
  EXPECT_EQ(pieces("x\n\ny"), (V{"x", "\n", "\n", "y"}));  // the last newline: \s+ alone
  EXPECT_EQ(pieces("x \n y"), (V{"x", " \n", " y"}));
  EXPECT_EQ(pieces("end.  "), (V{"end", ".", "  "}));      // trailing whitespace kept whole
  EXPECT_EQ(pieces("--> ok!!"), (V{"-->", " ok", "!!"}));
  EXPECT_EQ(pieces("'S"), (V{"'", "S"}));                  // contractions are lowercase only
}

TEST(PreTokenizer, DigitsAreIsolated) {
  EXPECT_EQ(pieces("in 1851 he"), (V{"in", " ", "1", "8", "5", "1", " he"}));
  EXPECT_EQ(pieces("x1y"), (V{"x", "1", "y"}));
}

TEST(PreTokenizer, Unicode) {
  // Curly quotes and the em dash are symbols, accented letters are letters.
  EXPECT_EQ(pieces("\xE2\x80\x9C" "Call\xE2\x80\x9D"), (V{"\xE2\x80\x9C", "Call", "\xE2\x80\x9D"}));
  EXPECT_EQ(pieces("caf\xC3\xA9 \xE2\x80\x94 na\xC3\xAFve"),
            (V{"caf\xC3\xA9", " \xE2\x80\x94", " na\xC3\xAFve"}));
  // Invalid UTF-8 bytes survive as pieces of their own class.
  const std::string bad = "a\xFF" "b";
  std::string joined;
  for (const auto& p : pieces(bad)) joined += p;
  EXPECT_EQ(joined, bad);
}

Tokenizer tiny_tokenizer() {
  const auto bytes = testing::tiny_llama_gguf({});
  const GgufFile f = GgufFile::parse(bytes);
  return Tokenizer(f);
}

TEST(Tokenizer, MergesByRankAndRoundTrip) {
  const Tokenizer tok = tiny_tokenizer();
  // Merges: "t h" (rank 0), "th e", "Ġ the", "a n", "an d". " the" becomes one token.
  const int the_token = tok.token_id("\xC4\xA0the");
  ASSERT_GE(the_token, 0);
  const std::vector<int> ids = tok.encode("and the cat");
  EXPECT_EQ(ids.front(), tok.token_id("and"));
  EXPECT_EQ(ids[1], the_token);
  EXPECT_EQ(tok.decode(ids), "and the cat");
  // "cat" has no merges: one byte token per character.
  EXPECT_EQ(ids.size(), 2u + 4u);
  const std::string all_bytes = [] {
    std::string s;
    for (int b = 1; b < 256; ++b) s += static_cast<char>(b);
    return s;
  }();
  EXPECT_EQ(tok.decode(tok.encode(all_bytes)), all_bytes);
}

TEST(Tokenizer, SpecialTokens) {
  const Tokenizer tok = tiny_tokenizer();
  const int eot = tok.token_id("<|endoftext|>");
  EXPECT_EQ(tok.eos(), eot);
  const std::vector<int> with = tok.encode("a<|endoftext|>b", /*parse_special=*/true);
  EXPECT_EQ(with, (std::vector<int>{tok.token_id("a"), eot, tok.token_id("b")}));
  const std::vector<int> without = tok.encode("a<|endoftext|>b", /*parse_special=*/false);
  EXPECT_GT(without.size(), 3u);
  EXPECT_EQ(tok.decode(without), "a<|endoftext|>b");
  EXPECT_THROW((void)tok.decode_token(tok.vocab_size()), Error);
}

TEST(Tokenizer, RejectsOtherModels) {
  testing::GgufWriter w;
  w.add_string("tokenizer.ggml.model", "llama");
  const auto bytes = w.bytes();
  EXPECT_THROW(Tokenizer{GgufFile::parse(bytes)}, Error);
}

std::string real_model_path() {
  const std::string p = std::string(TQKV_MODEL_DIR) + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  return std::filesystem::exists(p) ? p : std::string();
}

// Ids produced by Hugging Face `tokenizers` (BPE from this file's vocab and merges with the
// SmolLM2 pre-tokenizer; scripts/eval/check_logits.py) for the same strings.
TEST(TokenizerRealModel, MatchesHuggingFaceIds) {
  const std::string path = real_model_path();
  if (path.empty()) GTEST_SKIP() << "SmolLM2 GGUF absent: run scripts/fetch-model.sh to enable";
  const Tokenizer tok(GgufFile::open(path));
  EXPECT_EQ(tok.vocab_size(), 49152);
  EXPECT_EQ(tok.encode("Call me Ishmael. Some years ago"), (std::vector<int>{12800, 549, 46588, 30, 2015, 929, 3156}));
  EXPECT_EQ(tok.encode("In 1851, the whale\u2014it said\u2019s \"no\"!"), (std::vector<int>{788, 216, 33, 40, 37, 33, 28, 260, 15682, 1265, 269, 1137, 417, 99, 476, 4607, 18, 17}));
  const std::vector<int> chat = tok.encode("<|im_start|>user\nhi<|im_end|>", true);
  EXPECT_EQ(chat.front(), tok.token_id("<|im_start|>"));
  EXPECT_EQ(chat.back(), tok.token_id("<|im_end|>"));
}

}  // namespace
}  // namespace tqkv::model
