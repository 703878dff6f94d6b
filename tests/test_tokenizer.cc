// Tokenizers against the reference ids in shared/data/golden (made by golden/make_golden.py):
//   tok_llama2.json  sentencepiece, Llama-2 tokenizer.model      -> load_sentencepiece_model
//   tok_llama3.json  tiktoken, Llama-3 (as HF tokenizer.json)    -> load_tokenizer_json
//   tok_tiny.json    transformers, the two tiny models' tokenizer.json -> load_tokenizer(dir)
//   models.json      prompts with BOS and the perplexity token counts of the tiny models
// plus one handcrafted bad file per failure kind, and BOS/EOS resolution from the config files.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/stopwatch.h"
#include "formats/tokenizer.h"
#include "formats/tokenizer_impl.h"
#include "test_data.h"

namespace llmq {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Ids = std::vector<int32_t>;

std::string data(const std::string& rel) { return ::llmq::testing::test_data_dir() + "/" + rel; }

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot open " << path;
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  ASSERT_TRUE(out) << "cannot write " << path;
}

json read_json(const std::string& path) { return json::parse(read_text(path)); }

// The first n Unicode characters of UTF-8 text (Python's text[:n]).
std::string first_chars(const std::string& text, size_t n) {
  size_t i = 0;
  for (size_t count = 0; i < text.size() && count < n; ++count) {
    ++i;
    while (i < text.size() && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) ++i;
  }
  return text.substr(0, i);
}

std::string show(const std::string& text) {
  std::string out;
  for (unsigned char c : text.substr(0, 80)) {
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else {
      out += static_cast<char>(c);
    }
  }
  return "\"" + out + (text.size() > 80 ? "...\"" : "\"");
}

std::string show(const Ids& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size() && i < 40; ++i) out += (i ? ", " : "") + std::to_string(ids[i]);
  return out + (ids.size() > 40 ? ", ...]" : "]");
}

// Compares encode(text) with the golden ids of every case; reports each failing text.
template <class Encode>
int count_mismatches(const json& cases, Encode encode, const std::string& what) {
  int bad = 0;
  for (const json& c : cases) {
    const std::string text = c.at("text").get<std::string>();
    const Ids want = c.at("ids").get<Ids>();
    const Ids got = encode(text);
    if (got != want) {
      ++bad;
      ADD_FAILURE() << what << ": mismatch for text " << show(text) << "\n  want " << show(want)
                    << "\n  got  " << show(got);
    }
  }
  return bad;
}

// Every golden case encodes to its ids; the match count is printed for the log.
template <class Encode>
void expect_golden_ids(const json& cases, Encode encode, const std::string& what) {
  const int bad = count_mismatches(cases, encode, what);
  std::printf("%s: %d / %zu golden cases match\n", what.c_str(), static_cast<int>(cases.size()) - bad, cases.size());
  EXPECT_EQ(bad, 0);
}

std::unique_ptr<Tokenizer> must(Expected<std::unique_ptr<Tokenizer>> t) {
  EXPECT_TRUE(t.has_value()) << t.status().message();
  return t.has_value() ? std::move(*t) : nullptr;
}

// ---------------------------------------------------------------------------------------------
// Llama-2 sentencepiece

TEST(TokenizerLlama2, MatchesSentencepieceGolden) {
  LLMQ_REQUIRE_TEST_DATA();
  const json golden = read_json(data("golden/tok_llama2.json"));
  auto tok = must(load_sentencepiece_model(data("tokenizers/llama2/tokenizer.model")));
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->vocab_size(), 32000);
  ASSERT_TRUE(tok->bos_id().has_value());
  EXPECT_EQ(*tok->bos_id(), golden.at("bos_id").get<int32_t>());
  EXPECT_EQ(tok->eos_ids(), Ids{golden.at("eos_id").get<int32_t>()});
  EXPECT_TRUE(tok->adds_bos());
  const json& cases = golden.at("cases");
  ASSERT_GE(cases.size(), 250u);
  expect_golden_ids(cases, [&](const std::string& t) { return tok->encode_ordinary(t); }, "llama2 sentencepiece");

  // decode inverts encode for all of these texts (sentencepiece keeps every byte: byte pieces).
  for (const json& c : cases) {
    const std::string text = c.at("text").get<std::string>();
    EXPECT_EQ(tok->decode(tok->encode_ordinary(text)), text) << "round trip of " << show(text);
  }
  // Tokenizer::encode prepends BOS.
  const Ids plain = tok->encode_ordinary("Hello world");
  Ids with_bos{1};
  with_bos.insert(with_bos.end(), plain.begin(), plain.end());
  EXPECT_EQ(tok->encode("Hello world"), with_bos);
}

TEST(TokenizerLlama2, ControlPiecesOnlyWithSpecials) {
  LLMQ_REQUIRE_TEST_DATA();
  auto tok = must(load_sentencepiece_model(data("tokenizers/llama2/tokenizer.model")));
  ASSERT_TRUE(tok);
  const Ids hello = tok->encode_ordinary("Hello");
  Ids want{1};
  want.insert(want.end(), hello.begin(), hello.end());
  want.push_back(2);
  EXPECT_EQ(tok->encode_with_specials("<s>Hello</s>"), want);
  for (int32_t id : tok->encode_ordinary("<s>Hello</s>")) {
    EXPECT_NE(id, 1);
    EXPECT_NE(id, 2);
  }
}

TEST(TokenizerLlama2, LoadTokenizerDirUsesModelWithoutJson) {
  LLMQ_REQUIRE_TEST_DATA();
  const std::string dir = ::llmq::testing::scratch_dir("tok-llama2-dir");
  fs::copy_file(data("tokenizers/llama2/tokenizer.model"), dir + "/tokenizer.model");
  write_text(dir + "/tokenizer_config.json", R"({"add_bos_token": false, "eos_token": {"content": "</s>"}})");
  auto tok = must(load_tokenizer(dir));
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->bos_id(), std::optional<int32_t>(1));
  EXPECT_EQ(tok->eos_ids(), Ids{2});
  EXPECT_FALSE(tok->adds_bos());
  EXPECT_EQ(tok->encode("Hi"), tok->encode_ordinary("Hi"));
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Llama-3 byte-level BPE

TEST(TokenizerLlama3, MatchesTiktokenGolden) {
  LLMQ_REQUIRE_TEST_DATA();
  const json golden = read_json(data("golden/tok_llama3.json"));
  const auto t0 = Clock::now();
  auto tok = must(load_tokenizer_json(data("tokenizers/llama3/tokenizer.json")));
  const double load_s = seconds_since(t0);
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->vocab_size(), 128000);
  EXPECT_FALSE(tok->adds_bos());  // this file has no TemplateProcessing and no added tokens
  const json& cases = golden.at("cases");
  ASSERT_GE(cases.size(), 250u);
  expect_golden_ids(cases, [&](const std::string& t) { return tok->encode_ordinary(t); }, "llama3 byte-level BPE");
  for (const json& c : cases) {
    const std::string text = c.at("text").get<std::string>();
    EXPECT_EQ(tok->decode(c.at("ids").get<Ids>()), text) << "decode of " << show(text);
  }

  // Timing, printed only (tests do not assert on wall-clock time): ~1 MB of mixed text, cold
  // (fresh tokenizer, empty cache).
  auto fresh = must(load_tokenizer_json(data("tokenizers/llama3/tokenizer.json")));
  ASSERT_TRUE(fresh);
  const std::string text = read_text(data("text/tinystories_val.txt")) + read_text(data("text/calib_mixed.txt"));
  const auto t1 = Clock::now();
  const Ids ids = fresh->encode_ordinary(text);
  const double encode_s = seconds_since(t1);
  std::printf("llama3 tokenizer.json: load %.3f s; encode %.2f MB -> %zu tokens in %.3f s\n", load_s,
              text.size() / 1e6, ids.size(), encode_s);
  EXPECT_EQ(fresh->decode(ids), text);
}

// Writes the Llama-3 tokenizer.json with added_tokens filled in from the golden special-token
// map, as real Llama-3 checkpoints ship it.
std::string llama3_dir_with_specials(const json& special_tokens, const std::string& name) {
  const std::string dir = ::llmq::testing::scratch_dir(name);
  std::string text = read_text(data("tokenizers/llama3/tokenizer.json"));
  json added = json::array();
  for (const auto& [content, id] : special_tokens.items()) {
    added.push_back({{"id", id}, {"content", content}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  const std::string empty = "\"added_tokens\":[]";
  const size_t at = text.find(empty);
  EXPECT_NE(at, std::string::npos) << "tokenizer.json layout changed";
  if (at != std::string::npos) text.replace(at, empty.size(), "\"added_tokens\":" + added.dump());
  write_text(dir + "/tokenizer.json", text);
  return dir;
}

TEST(TokenizerLlama3, ChatExampleWithSpecialTokens) {
  LLMQ_REQUIRE_TEST_DATA();
  const json golden = read_json(data("golden/tok_llama3.json"));
  const std::string dir = llama3_dir_with_specials(golden.at("special_tokens"), "tok-llama3-chat");
  write_text(dir + "/tokenizer_config.json",
             R"({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})");
  write_text(dir + "/config.json", R"({"bos_token_id": 128000, "eos_token_id": [128001, 128009]})");
  auto tok = must(load_tokenizer(dir));
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->vocab_size(), 128256);
  EXPECT_EQ(tok->bos_id(), std::optional<int32_t>(128000));
  EXPECT_EQ(tok->eos_ids(), (Ids{128009, 128001}));
  EXPECT_TRUE(tok->adds_bos());

  const std::string chat = golden.at("chat_example").at("text").get<std::string>();
  const Ids want = golden.at("chat_example").at("ids").get<Ids>();
  EXPECT_EQ(tok->encode_with_specials(chat), want) << "chat example";
  EXPECT_EQ(tok->decode(want), chat);
  // Ordinary encoding never produces a special id, and still matches every golden case.
  for (int32_t id : tok->encode_ordinary(chat)) EXPECT_LT(id, 128000);
  const int bad = count_mismatches(golden.at("cases"),
                                   [&](const std::string& t) { return tok->encode_ordinary(t); },
                                   "llama3 with added tokens");
  EXPECT_EQ(bad, 0);
  // Longest match: "<|reserved_special_token_10|>" is not "<|reserved_special_token_1|>" + "0|>".
  EXPECT_EQ(tok->encode_with_specials("<|reserved_special_token_10|>"), Ids{128015});
  EXPECT_EQ(tok->encode("hi"), (Ids{128000, 6151}));
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// The tiny models: sentencepiece-style tokenizer.json

const char* const kTinyModels[] = {"stories260k", "tinystories-656k"};

// The decode of encode(text) that transformers gives: Strip(start 1) removes the space a text
// starts with (no "▁" was prepended to it), and characters the vocab cannot express (no byte
// fallback tokens in tinystories-656k) are dropped.
std::string expected_round_trip(const Tokenizer& tok, const std::string& text) {
  std::string kept;
  for (size_t i = 0; i < text.size();) {
    size_t n = 1;
    while (i + n < text.size() && (static_cast<unsigned char>(text[i + n]) & 0xC0) == 0x80) ++n;
    const std::string ch = text.substr(i, n);
    // A character is expressible when it encodes to something besides the prepended "▁".
    const Ids alone = tok.encode_ordinary("x" + ch);
    if (ch == " " || tok.decode(alone) == "x" + ch) kept += ch;
    i += n;
  }
  return !kept.empty() && text[0] == ' ' ? kept.substr(1) : kept;
}

// One test per tiny model, its tokenizer.json loaded by SetUp.
class TokenizerTiny : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    LLMQ_REQUIRE_TEST_DATA();
    tok_ = must(load_tokenizer(data(std::string("models/") + name())));
    ASSERT_TRUE(tok_);
  }
  std::string name() const { return GetParam(); }
  std::unique_ptr<Tokenizer> tok_;
};

TEST_P(TokenizerTiny, MatchesTransformersGolden) {
  const json golden = read_json(data("golden/tok_tiny.json"));
  const json& cases = golden.at(name()).at("cases");
  ASSERT_GE(cases.size(), 250u);
  // transformers recognises added tokens even with add_special_tokens=False.
  expect_golden_ids(cases, [&](const std::string& t) { return tok_->encode_with_specials(t); },
                    name() + " tokenizer.json");

  // decode(encode(t)) == t except where transformers' own decode differs (see
  // expected_round_trip): texts that start with a space (all the WikiText lines) and, for
  // tinystories-656k, characters outside its vocab.
  int same_ordinary = 0, round_trips = 0, leading_space = 0, other_exceptions = 0;
  for (const json& c : cases) {
    const std::string text = c.at("text").get<std::string>();
    const Ids ids = c.at("ids").get<Ids>();
    const bool has_special_text = text.find("<s>") != std::string::npos || text.find("</s>") != std::string::npos;
    if (!has_special_text) {
      EXPECT_EQ(tok_->encode_ordinary(text), ids) << "ordinary encoding of " << show(text);
      ++same_ordinary;
    }
    const std::string back = tok_->decode(ids);
    EXPECT_EQ(back, expected_round_trip(*tok_, text)) << "decode of " << show(text);
    if (back == text) {
      ++round_trips;
    } else if (!text.empty() && text[0] == ' ') {
      ++leading_space;
    } else {
      ++other_exceptions;
    }
  }
  std::printf("%s: ordinary encoding checked on %d texts; decode(encode(t)) == t for %d, "
              "not for %d starting with a space and %d with characters outside the vocab\n",
              name().c_str(), same_ordinary, round_trips, leading_space, other_exceptions);
  EXPECT_GT(round_trips, 120);
  // stories260k has all 256 byte tokens: every text without a leading space round-trips.
  if (name() == "stories260k") {
    EXPECT_EQ(other_exceptions, 0);
  }
}

TEST_P(TokenizerTiny, PromptsWithBosMatchModelsGolden) {
  const json golden = read_json(data("golden/models.json"));
  EXPECT_EQ(tok_->bos_id(), std::optional<int32_t>(1));
  EXPECT_EQ(tok_->eos_ids(), Ids{2});
  EXPECT_EQ(tok_->adds_bos(), golden.at(name()).at("tokenizer_adds_bos").get<bool>());
  const json& prompts = golden.at(name()).at("float32").at("prompts");
  ASSERT_EQ(prompts.size(), 3u);
  const int bad = count_mismatches(prompts, [&](const std::string& t) { return tok_->encode(t); }, name());
  EXPECT_EQ(bad, 0);
}

TEST_P(TokenizerTiny, PerplexityTextTokenCount) {
  const json golden = read_json(data("golden/models.json"));
  const std::string story = read_text(data("text/tinystories_val.txt"));
  const json& ppl = golden.at(name()).at("float32").at("ppl_tinystories");
  const Ids ids = tok_->encode(first_chars(story, ppl.at("chars").get<size_t>()));
  EXPECT_EQ(static_cast<int64_t>(ids.size()), ppl.at("tokens").get<int64_t>());
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], 1);
}

INSTANTIATE_TEST_SUITE_P(Models, TokenizerTiny, ::testing::ValuesIn(kTinyModels),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           std::string id = info.param;  // test names allow letters, digits and '_'
                           std::replace(id.begin(), id.end(), '-', '_');
                           return id;
                         });

// ---------------------------------------------------------------------------------------------
// Handcrafted tokenizers

// GPT-2 byte alphabet, written independently of the implementation.
std::string gpt2_char(int b) {
  int cp = b;
  if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)) {
    int n = 0;
    for (int k = 0; k < b; ++k) {
      if (!((k >= 33 && k <= 126) || (k >= 161 && k <= 172) || k >= 174)) ++n;
    }
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// A byte-level tokenizer: the 256 bytes, then "ab", "abc", "Ġa" by merges.
json small_byte_level() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[gpt2_char(b)] = b;
  vocab["ab"] = 256;
  vocab["abc"] = 257;
  vocab[gpt2_char(' ') + "a"] = 258;
  return {{"version", "1.0"},
          {"added_tokens", json::array({{{"id", 300}, {"content", "<|x|>"}, {"special", true}},
                                        {{"id", 301}, {"content", "<|x|>y"}, {"special", true}},
                                        {{"id", 302}, {"content", "@@"}, {"special", false}}})},
          {"normalizer", nullptr},
          {"pre_tokenizer",
           {{"type", "Sequence"},
            {"pretokenizers",
             {{{"type", "Split"},
               {"pattern", {{"Regex", R"( ?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)"}}},
               {"behavior", "Isolated"},
               {"invert", false}},
              {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}},
          {"post_processor", nullptr},
          {"model",
           {{"type", "BPE"},
            {"vocab", vocab},
            {"merges", json::array({json::array({"a", "b"}), json::array({"ab", "c"}),
                                    json::array({gpt2_char(' '), "a"})})}}}};
}

TEST(TokenizerHandmade, ByteLevelMergesSpecialsAndInvalidUtf8) {
  auto tok = must(load_tokenizer_json_text(small_byte_level().dump(), "small.json"));
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->vocab_size(), 303);
  EXPECT_EQ(tok->encode_ordinary("abc ab a"), (Ids{257, 32, 256, 258}));  // (a,b) outranks (Ġ,a)
  // Specials: leftmost, then longest; only with encode_with_specials. "@@" is a non-special
  // added token: recognised by both, as in HF.
  EXPECT_EQ(tok->encode_with_specials("<|x|>y<|x|>"), (Ids{301, 300}));
  EXPECT_EQ(tok->encode_with_specials("q<|x|>"), (Ids{'q', 300}));
  EXPECT_EQ(tok->encode_ordinary("@@"), (Ids{302}));
  EXPECT_EQ(tok->encode_with_specials("@@"), (Ids{302}));
  const Ids plain = tok->encode_ordinary("<|x|>");
  EXPECT_EQ(tok->decode(plain), "<|x|>");
  for (int32_t id : plain) EXPECT_LT(id, 256);
  // Text that is not UTF-8 still encodes byte for byte; decode replaces the bad bytes as HF.
  const std::string bad = std::string("a\xFF\xC3", 3) + "b";
  const Ids ids = tok->encode_ordinary(bad);
  std::vector<int> bytes(ids.begin(), ids.end());
  EXPECT_EQ(bytes, (std::vector<int>{'a', 0xFF, 0xC3, 'b'}));
  EXPECT_EQ(tok->decode(ids), "a\xEF\xBF\xBD\xEF\xBF\xBD" "b");
  // No BOS anywhere in the file: encode adds nothing.
  EXPECT_FALSE(tok->adds_bos());
  EXPECT_EQ(tok->encode("ab"), Ids{256});
}

TEST(TokenizerHandmade, MergesAsStringsOrPairsAgree) {
  json a = small_byte_level();
  json b = a;
  b["model"]["merges"] = json::array({"a b", "ab c", gpt2_char(' ') + " a"});
  auto ta = must(load_tokenizer_json_text(a.dump(), "a.json"));
  auto tb = must(load_tokenizer_json_text(b.dump(), "b.json"));
  ASSERT_TRUE(ta && tb);
  for (const char* text : {"abc abab cab", " a a  a", "xyz 123 !!"}) {
    EXPECT_EQ(ta->encode_ordinary(text), tb->encode_ordinary(text)) << text;
  }
}

TEST(TokenizerHandmade, BosEosFromConfigFiles) {
  const std::string dir = ::llmq::testing::scratch_dir("tok-bos-eos");
  json t = small_byte_level();
  t["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", json::array({{{"SpecialToken", {{"id", "<|x|>"}, {"type_id", 0}}}},
                                                 {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})}};
  write_text(dir + "/tokenizer.json", t.dump());
  // The template alone: BOS <|x|> added.
  auto tok = must(load_tokenizer(dir));
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->encode("ab"), (Ids{300, 256}));
  EXPECT_TRUE(tok->eos_ids().empty());
  // config.json ids (an int and a list).
  write_text(dir + "/config.json", R"({"bos_token_id": 5, "eos_token_id": [6, 7]})");
  tok = must(load_tokenizer(dir));
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->bos_id(), std::optional<int32_t>(5));
  EXPECT_EQ(tok->eos_ids(), (Ids{6, 7}));
  // tokenizer_config.json wins for BOS; its eos_token comes first; add_bos_token false.
  write_text(dir + "/tokenizer_config.json",
             R"({"bos_token": {"content": "<|x|>y"}, "eos_token": "@@", "add_bos_token": false})");
  tok = must(load_tokenizer(dir));
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->bos_id(), std::optional<int32_t>(301));
  EXPECT_EQ(tok->eos_ids(), (Ids{302, 6, 7}));
  EXPECT_FALSE(tok->adds_bos());
  EXPECT_EQ(tok->encode("ab"), Ids{256});
  // A bos_token that is no token is an error naming tokenizer_config.json.
  write_text(dir + "/tokenizer_config.json", R"({"bos_token": "<nope>"})");
  auto bad = load_tokenizer(dir);
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.status().message().find("tokenizer_config.json: bos_token"), std::string::npos)
      << bad.status().message();
  write_text(dir + "/tokenizer_config.json", "{}");
  write_text(dir + "/config.json", R"({"eos_token_id": 100000})");
  bad = load_tokenizer(dir);
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.status().message().find("config.json: eos_token_id"), std::string::npos)
      << bad.status().message();
  fs::remove_all(dir);
}

TEST(TokenizerHandmade, SentencepieceStyleByteFallbackAndUnknowns) {
  // "▁" handling, <0xNN> fallback, and a character with neither a token nor fallback bytes.
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}, {"<0xC3>", 3}, {"<0xA9>", 4},
                {"\xE2\x96\x81", 5}, {"a", 6}, {"b", 7}, {"\xE2\x96\x81" "a", 8}};
  json t = {{"added_tokens", json::array({{{"id", 1}, {"content", "<s>"}, {"special", true}}})},
            {"normalizer",
             {{"type", "Sequence"},
              {"normalizers",
               {{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
                {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}}}}},
            {"pre_tokenizer", nullptr},
            {"model",
             {{"type", "BPE"}, {"unk_token", "<unk>"}, {"byte_fallback", true}, {"fuse_unk", true},
              {"vocab", vocab}, {"merges", json::array({"\xE2\x96\x81 a"})}}}};
  auto tok = must(load_tokenizer_json_text(t.dump(), "sp.json"));
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->encode_ordinary("a b"), (Ids{8, 5, 7}));
  EXPECT_EQ(tok->encode_ordinary(" a"), (Ids{8}));        // no second "▁" before a leading space
  EXPECT_EQ(tok->encode_ordinary("\xC3\xA9"), (Ids{5, 3, 4}));  // é by byte fallback
  EXPECT_EQ(tok->encode_ordinary("a\xC3\xA8"), (Ids{8}));  // è: 0xA8 has no token: dropped
  EXPECT_EQ(tok->encode_with_specials("<s>a"), (Ids{1, 6}));  // "▁" only at the text start
  EXPECT_EQ(tok->decode({8, 5, 7}), "a b");
  EXPECT_EQ(tok->decode({5, 3, 4}), "\xC3\xA9");
  EXPECT_EQ(tok->decode({3, 6}), "\xEF\xBF\xBD" "a");  // a lone lead byte decodes to U+FFFD
}

// ---------------------------------------------------------------------------------------------
// Bad input: one handcrafted file per failure kind, each a one-line "PATH: problem".

void expect_error(const Expected<std::unique_ptr<Tokenizer>>& t, const std::string& path,
                  const std::string& problem) {
  ASSERT_FALSE(t.has_value()) << "expected an error about " << problem;
  const std::string m = t.status().message();
  EXPECT_EQ(m.rfind(path + ": ", 0), 0u) << m;
  EXPECT_NE(m.find(problem), std::string::npos) << m;
  EXPECT_EQ(m.find('\n'), std::string::npos) << m;
}

TEST(TokenizerBadInput, TokenizerJson) {
  const std::string dir = ::llmq::testing::scratch_dir("tok-bad");
  const std::string path = dir + "/tokenizer.json";
  const auto load = [&](const std::string& text) {
    write_text(path, text);
    return load_tokenizer_json(path);
  };
  const json good = small_byte_level();
  expect_error(load("{not json"), path, "not valid JSON");
  expect_error(load("[1, 2]"), path, "not a tokenizer.json object");
  expect_error(load(R"({"version": "1.0"})"), path, "no \"model\" object");
  json j = good;
  j["model"].erase("vocab");
  expect_error(load(j.dump()), path, "no \"vocab\"");
  j = good;
  j["model"]["vocab"]["zz"] = "seven";
  expect_error(load(j.dump()), path, "has no integer id");
  j = good;
  j["model"]["type"] = "WordPiece";
  expect_error(load(j.dump()), path, "unsupported model type \"WordPiece\"");
  j = good;
  j["model"]["type"] = "Unigram";
  expect_error(load(j.dump()), path, "unsupported model type \"Unigram\"");
  j = good;
  j["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  expect_error(load(j.dump()), path, "unsupported pre_tokenizer \"BertPreTokenizer\"");
  j = good;
  j["normalizer"] = {{"type", "NFKC"}};
  expect_error(load(j.dump()), path, "unsupported normalizer \"NFKC\"");
  j = good;
  j["model"]["merges"].push_back(json::array({"ab", "zzz"}));
  expect_error(load(j.dump()), path, "merge 3 (\"ab\", \"zzz\") names \"zzz\", which is not in the vocab");
  j = good;
  j["model"]["merges"].push_back("a b c");
  expect_error(load(j.dump()), path, "merge 3");
  j = good;
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  expect_error(load(j.dump()), path, "invalid split regex");
  j = good;
  j["added_tokens"].push_back({{"id", -4}, {"content", "q"}});
  expect_error(load(j.dump()), path, "out of range");
  expect_error(load_tokenizer_json(dir + "/missing.json"), dir + "/missing.json", "cannot open");
  expect_error(load_tokenizer(dir + "/nothing-here"), dir + "/nothing-here", "no tokenizer.json");
  fs::remove_all(dir);
}

TEST(TokenizerBadInput, SentencepieceModel) {
  const std::string dir = ::llmq::testing::scratch_dir("tok-bad-sp");
  const std::string path = dir + "/tokenizer.model";
  write_text(path, "this is not a protobuf \x01\x02\x03 at all");
  expect_error(load_sentencepiece_model(path), path, "not a SentencePiece model");
  expect_error(load_tokenizer(dir), path, "not a SentencePiece model");
  fs::remove_all(dir);
}

TEST(TokenizerBadInput, TiktokenFileIsNotSentencepiece) {
  LLMQ_REQUIRE_TEST_DATA();
  const std::string path = data("tokenizers/llama3/tokenizer.model");
  expect_error(load_sentencepiece_model(path), path, "not a SentencePiece model");
}

}  // namespace
}  // namespace llmq
