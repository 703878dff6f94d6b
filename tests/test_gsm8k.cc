// GSM8K evaluation (eval/gsm8k.h): CPython-compatible few-shot sampling, lm-eval's answer
// extraction and exact_match on a table of tricky completions, prompt text byte-equal to the
// harness rules, stop strings, and the whole pipeline on stories260k (mechanics, not score).
// Expected values marked "CPython" / "reference" were computed with python3 3.11 and
// scripts/gsm8k_reference.py (Jinja2 + random + re, the harness's own mechanisms).
#include <gtest/gtest.h>
#include <omp.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "eval/answer_extract.h"
#include "eval/gsm8k.h"
#include "eval/py_random.h"
#include "formats/checkpoint.h"
#include "model/generate.h"
#include "tests/cli_util.h"
#include "tests/test_data.h"

namespace llmq {
namespace {

namespace fs = std::filesystem;

// ---- CPython's random -------------------------------------------------------------------

TEST(PyRandom, MatchesCPythonGetrandbits) {
  PyRandom r(1234);  // CPython: [random.Random(1234).getrandbits(32) for _ in range(5)]
  const std::vector<uint32_t> expect = {4150886329u, 3342196574u, 1892932127u, 501869158u, 32175636u};
  for (uint32_t e : expect) EXPECT_EQ(r.getrandbits(32), e);
  PyRandom zero(0);
  for (uint32_t e : {3626764237u, 1654615998u, 3255389356u}) EXPECT_EQ(zero.getrandbits(32), e);
  PyRandom big((int64_t{1} << 40) + 5);  // a two-word key
  for (uint32_t e : {2166296868u, 2220160828u, 1153647273u}) EXPECT_EQ(big.getrandbits(32), e);
  PyRandom neg(-1234);  // CPython seeds with |a|
  EXPECT_EQ(neg.getrandbits(32), 4150886329u);
}

TEST(PyRandom, SampleMatchesCPythonBothAlgorithms) {
  // Set algorithm (n > setsize): random.Random(1234).sample(range(7473), 5), four calls in a row.
  PyRandom r(1234);
  const std::vector<std::vector<int64_t>> expect = {
      {6374, 3610, 957, 61, 742}, {7462, 6610, 4769, 286, 5501}, {5677, 687, 806, 6279, 2905}, {1939, 142, 252, 6461, 129}};
  for (const auto& e : expect) {
    auto s = r.sample_indices(7473, 5);
    ASSERT_TRUE(s) << s.status().message();
    EXPECT_EQ(*s, e);
  }
  // Pool algorithm (n <= setsize), including k > 5 where setsize grows: Random(7).
  PyRandom p(7);
  EXPECT_EQ(*p.sample_indices(10, 10), (std::vector<int64_t>{5, 2, 6, 9, 0, 7, 4, 1, 3, 8}));
  EXPECT_EQ(*p.sample_indices(30, 8), (std::vector<int64_t>{1, 2, 13, 27, 28, 7, 25, 17}));
  EXPECT_EQ(*p.sample_indices(5, 5), (std::vector<int64_t>{3, 0, 2, 4, 1}));
  EXPECT_FALSE(p.sample_indices(3, 4));
  EXPECT_FALSE(p.sample_indices(3, -1));
}

// ---- Python `re` semantics ----------------------------------------------------------------

TEST(PyRegex, FollowsPythonRe) {
  auto re = [](const std::string& p) {
    auto r = PyRegex::compile(p);
    EXPECT_TRUE(r) << r.status().message();
    return *r;
  };
  // re.findall('a*|b', 'b') == ['', 'b', '']: empty matches next to a non-empty one (3.7+).
  const auto m = re("a*|b").find_all("b");
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[0][0], "");
  EXPECT_EQ(m[1][0], "b");
  EXPECT_EQ(m[2][0], "");
  EXPECT_EQ(re("x*").sub("abxd", "-"), "-a-b--d-");
  // '$' also matches before a final newline; '.' stops at '\n' unless (?s).
  EXPECT_EQ(re("\\.$").sub("5.\n", ""), "5\n");
  EXPECT_EQ(re("\\.$").sub("5..", ""), "5.");
  EXPECT_EQ(re("(?s).*#### ").sub("a\n#### 5", ""), "5");
  EXPECT_EQ(re(".*#### ").sub("a\n#### 5", ""), "a\n5");
  EXPECT_EQ(re(".*#### ").sub("#### 1\n#### 2", ""), "1\n2");
  // Groups that do not take part are "" (findall tuples).
  const auto g = re("(a)|(b)").find_all("ab");
  ASSERT_EQ(g.size(), 2u);
  EXPECT_EQ(g[0][1], "a");
  EXPECT_EQ(g[0][2], "");
  EXPECT_EQ(g[1][1], "");
  EXPECT_EQ(g[1][2], "b");
  // '.' is one code point, and invalid UTF-8 does not stop matching.
  EXPECT_EQ(re("^.$").find_all("\xe2\x80\x99").size(), 1u);
  EXPECT_EQ(re("[0-9]+").find_all("\xff 12 \xc3").size(), 1u);
  EXPECT_FALSE(PyRegex::compile("(unclosed"));
}

// ---- extraction and exact_match ----------------------------------------------------------

struct ExtractCase {
  Gsm8kStyle style;
  const char* output;
  const char* target;  // doc_to_target: the whole answer (gsm8k) or the number (cot-llama)
  const char* strict;
  const char* flexible;
  bool strict_correct;
  bool flexible_correct;
};

// Expected values from scripts/gsm8k_reference.py (re.findall / re.sub / lower, as the harness).
const ExtractCase kExtractCases[] = {
    {Gsm8kStyle::kGsm8k, "The answer is 18.\n#### 18", "Janet sells 9 eggs.\n#### 18", "18", "18", true, true},
    {Gsm8kStyle::kGsm8k, "#### 1,234", "So 1234.\n#### 1234", "1,234", "1,234", true, true},
    {Gsm8kStyle::kGsm8k, "#### $1,234.", "#### 1,234", "[invalid]", "$1,234.", false, true},
    {Gsm8kStyle::kGsm8k, "#### -5", "#### -5", "-5", "-5", true, true},
    {Gsm8kStyle::kGsm8k, "#### 3\n#### 4", "#### 4", "3", "4", false, true},
    {Gsm8kStyle::kGsm8k, "I think it is 42.", "#### 42", "[invalid]", "42.", false, true},
    {Gsm8kStyle::kGsm8k, "no number here", "#### 7", "[invalid]", "[invalid]", false, false},
    {Gsm8kStyle::kGsm8k, "", "#### 0", "[invalid]", "[invalid]", false, false},
    {Gsm8kStyle::kGsm8k, "#### 7.", "#### 7", "7.", "7.", true, true},
    {Gsm8kStyle::kGsm8k, "Total: $70,000.00", "#### 70000", "[invalid]", "$70,000.00", false, false},
    {Gsm8kStyle::kGsm8k, "#### 72\nThat is 72 dollars.", "#### 72", "72", "72", true, true},
    {Gsm8kStyle::kGsm8k, "He pays 5 and 6", "#### 6", "[invalid]", "6", false, true},
    {Gsm8kStyle::kGsm8k, "-3 apples", "#### -3", "[invalid]", "-3", false, true},
    {Gsm8kStyle::kGsm8k, "The final answer is 8", "#### 8", "[invalid]", "8", false, true},
    {Gsm8kStyle::kGsm8k, "The final answer is $1,200. Done", "#### 1200", "[invalid]", "$1,200.", false, true},
    {Gsm8kStyle::kGsm8k, "The final answer is 5. The final answer is 6.", "#### 6", "[invalid]", "6.", false, true},
    {Gsm8kStyle::kGsm8k, "x ####5", "#### 5", "[invalid]", "5", false, true},
    {Gsm8kStyle::kGsm8k, "#### .5", "#### 0.5", ".5", ".5", false, false},
    {Gsm8kStyle::kGsm8k, "The answer is 1.5.", "#### 1.5", "[invalid]", "1.5.", false, true},
    {Gsm8kStyle::kGsm8k, "costs $5", "#### 5", "[invalid]", "$5", false, true},
    {Gsm8kStyle::kGsm8k, "1, 2 and 3", "#### 3", "[invalid]", "3", false, true},
    {Gsm8kStyle::kGsm8k, "The final answer is -2", "#### -2", "[invalid]", "-2", false, true},
    {Gsm8kStyle::kGsm8k, "The final answer is eight", "#### 8", "[invalid]", "[invalid]", false, false},
    {Gsm8kStyle::kGsm8k, "#### 5..", "#### 5", "5..", "5..", false, false},
    {Gsm8kStyle::kCotLlama, "The answer is 18.\n#### 18", "18", "[invalid]", "18", false, true},
    {Gsm8kStyle::kCotLlama, "#### 1,234", "1234", "[invalid]", "1,234", false, true},
    {Gsm8kStyle::kCotLlama, "#### $1,234.", "1,234", "[invalid]", "$1,234.", false, true},
    {Gsm8kStyle::kCotLlama, "#### -5", "-5", "[invalid]", "-5", false, true},
    {Gsm8kStyle::kCotLlama, "#### 3\n#### 4", "4", "[invalid]", "4", false, true},
    {Gsm8kStyle::kCotLlama, "I think it is 42.", "42", "[invalid]", "42.", false, true},
    {Gsm8kStyle::kCotLlama, "no number here", "7", "[invalid]", "[invalid]", false, false},
    {Gsm8kStyle::kCotLlama, "", "0", "[invalid]", "[invalid]", false, false},
    {Gsm8kStyle::kCotLlama, "#### 7.", "7", "[invalid]", "7.", false, true},
    {Gsm8kStyle::kCotLlama, "Total: $70,000.00", "70000", "[invalid]", "$70,000.00", false, false},
    {Gsm8kStyle::kCotLlama, "#### 72\nThat is 72 dollars.", "72", "[invalid]", "72", false, true},
    {Gsm8kStyle::kCotLlama, "He pays 5 and 6", "6", "[invalid]", "6", false, true},
    {Gsm8kStyle::kCotLlama, "-3 apples", "-3", "[invalid]", "-3", false, true},
    {Gsm8kStyle::kCotLlama, "The final answer is 8", "8", "8", "8", true, true},
    {Gsm8kStyle::kCotLlama, "The final answer is $1,200. Done", "1200", "$1,200.", "$1,200.", true, true},
    {Gsm8kStyle::kCotLlama, "The final answer is 5. The final answer is 6.", "6", "6.", "6.", true, true},
    {Gsm8kStyle::kCotLlama, "x ####5", "5", "[invalid]", "5", false, true},
    {Gsm8kStyle::kCotLlama, "#### .5", "0.5", "[invalid]", ".5", false, false},
    {Gsm8kStyle::kCotLlama, "The answer is 1.5.", "1.5", "[invalid]", "1.5.", false, true},
    {Gsm8kStyle::kCotLlama, "costs $5", "5", "[invalid]", "$5", false, true},
    {Gsm8kStyle::kCotLlama, "1, 2 and 3", "3", "[invalid]", "3", false, true},
    {Gsm8kStyle::kCotLlama, "The final answer is -2", "-2", "-2", "-2", true, true},
    {Gsm8kStyle::kCotLlama, "The final answer is eight", "8", "[invalid]", "[invalid]", false, false},
    {Gsm8kStyle::kCotLlama, "#### 5..", "5", "[invalid]", "5..", false, false},
};

TEST(Gsm8kExtract, TrickyCompletionsMatchTheHarness) {
  for (Gsm8kStyle style : {Gsm8kStyle::kGsm8k, Gsm8kStyle::kCotLlama}) {
    auto scorer = AnswerScorer::create(gsm8k_task_spec(style).scoring);
    ASSERT_TRUE(scorer) << scorer.status().message();
    int checked = 0;
    for (const ExtractCase& c : kExtractCases) {
      if (c.style != style) continue;
      ++checked;
      SCOPED_TRACE(std::string(gsm8k_style_name(style)) + " output: '" + c.output + "'");
      const std::string strict = scorer->extract(0, c.output);
      const std::string flexible = scorer->extract(1, c.output);
      EXPECT_EQ(strict, c.strict);
      EXPECT_EQ(flexible, c.flexible);
      EXPECT_EQ(scorer->exact_match(strict, c.target), c.strict_correct);
      EXPECT_EQ(scorer->exact_match(flexible, c.target), c.flexible_correct);
    }
    EXPECT_EQ(checked, 24);
  }
}

TEST(Gsm8kExtract, NormalisationAndTargets) {
  auto scorer = AnswerScorer::create(gsm8k_task_spec(Gsm8kStyle::kGsm8k).scoring);
  ASSERT_TRUE(scorer);
  EXPECT_EQ(scorer->normalise("Step one.\n#### $1,234."), "1234");
  EXPECT_EQ(scorer->normalise("[INVALID]"), "[invalid]");  // ignore_case
  EXPECT_EQ(scorer->normalise("#### 1\n#### 2"), "2");      // greedy (?s).*: after the last "#### "
  const Gsm8kDoc doc{"q", "He has 3 + 4 = <<3+4=7>>7.\n#### 7"};
  EXPECT_EQ(gsm8k_doc_to_target(Gsm8kStyle::kGsm8k, doc), doc.answer);
  EXPECT_EQ(gsm8k_doc_to_target(Gsm8kStyle::kCotLlama, doc), "7");
  EXPECT_EQ(gsm8k_doc_to_target(Gsm8kStyle::kCotLlama, Gsm8kDoc{"q", "a #### 1 ####  -2,5 \n"}), "-2,5");
}

// ---- stop strings -------------------------------------------------------------------------

TEST(GenerateUntil, CutsLikeTheHarness) {
  EXPECT_EQ(cut_at_stop_strings("42\n\nQuestion: next", {"Question:", "</s>"}), "42\n\n");
  EXPECT_EQ(cut_at_stop_strings("abc", {"", "zz"}), "abc");
  // Sequential split(term)[0], not the earliest of all: "bc" first leaves "a".
  EXPECT_EQ(cut_at_stop_strings("abc", {"bc", "ab"}), "a");
  EXPECT_EQ(cut_at_stop_strings("abc", {"ab", "bc"}), "");
}

// ---- prompts ------------------------------------------------------------------------------

std::vector<Gsm8kDoc> toy_train() {
  std::vector<Gsm8kDoc> t;
  for (int i = 0; i < 8; ++i)
    t.push_back({"Q" + std::to_string(i) + "?", "A" + std::to_string(i) + ".\n#### " + std::to_string(i)});
  return t;
}

TEST(Gsm8kPrompt, PlainPromptByteEqualToHarnessRules) {
  const std::vector<Gsm8kDoc> train = toy_train();
  const std::vector<Gsm8kDoc> test = {{"How many?", "It is 3.\n#### 3"}, {"More?", "#### 4"}};
  Gsm8kConfig c;
  c.fewshot = 3;
  c.seed = 1234;
  auto req = build_gsm8k_requests(test, train, c);
  ASSERT_TRUE(req) << req.status().message();
  ASSERT_EQ(req->size(), 2u);
  // CPython: r = random.Random(1234); r.sample(range(8), 3) -> [7, 0, 6], then [1, 6, 4].
  EXPECT_EQ((*req)[0].exemplars, (std::vector<int64_t>{7, 0, 6}));
  EXPECT_EQ((*req)[1].exemplars, (std::vector<int64_t>{1, 6, 4}));
  // doc_to_text + " " + answer + "\n\n" per exemplar, then doc_to_text of the test doc.
  const std::string expect =
      "Question: Q7?\nAnswer: A7.\n#### 7\n\n"
      "Question: Q0?\nAnswer: A0.\n#### 0\n\n"
      "Question: Q6?\nAnswer: A6.\n#### 6\n\n"
      "Question: How many?\nAnswer:";
  EXPECT_EQ((*req)[0].prompt, expect);
  EXPECT_EQ((*req)[0].target, test[0].answer);

  // An exemplar equal to the test doc is dropped, leaving K - 1 (x != doc filter).
  const std::vector<Gsm8kDoc> test_dup = {train[7]};
  auto dup = build_gsm8k_requests(test_dup, train, c);
  ASSERT_TRUE(dup);
  EXPECT_EQ((*dup)[0].exemplars, (std::vector<int64_t>{0, 6}));

  c.fewshot = 0;  // zero-shot: no sampler call, just the question
  auto zero = build_gsm8k_requests(test, train, c);
  ASSERT_TRUE(zero);
  EXPECT_EQ((*zero)[0].prompt, "Question: How many?\nAnswer:");
  c.fewshot = 9;
  EXPECT_FALSE(build_gsm8k_requests(test, train, c));
  c.fewshot = -2;
  EXPECT_FALSE(build_gsm8k_requests(test, train, c));
}

TEST(Gsm8kPrompt, CotLlamaChatPromptByteEqual) {
  const std::vector<Gsm8kDoc> test = {{"What is 2 + 2? ", "2 + 2 = 4\n#### 4"}};
  Gsm8kConfig c;
  c.style = Gsm8kStyle::kCotLlama;
  c.fewshot = 1;
  c.chat_template = ChatTemplateKind::kLlama3;
  auto req = build_gsm8k_requests(test, {}, c);
  ASSERT_TRUE(req) << req.status().message();
  const std::string instr = "Given the following problem, reason and give a final answer to the problem.\nProblem: ";
  const std::string tail =
      "\nYour response should end with \"The final answer is [answer]\" where [answer] is the response to the problem.";
  const std::string body =
      "<|start_header_id|>user<|end_header_id|>\n\n" + instr +
      "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
      "there will be 21 trees. How many trees did the grove workers plant today?" + tail +
      "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
      "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
      "been 21 - 15 = 6. The final answer is 6<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\n" + instr + "What is 2 + 2? " + tail +
      "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
  EXPECT_EQ((*req)[0].prompt, "<|begin_of_text|>" + body);
  EXPECT_EQ((*req)[0].target, "4");
  c.chat_template = ChatTemplateKind::kLlama31;
  req = build_gsm8k_requests(test, {}, c);
  ASSERT_TRUE(req);
  EXPECT_EQ((*req)[0].prompt,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
            "Today Date: 26 Jul 2024\n\n<|eot_id|>" + body);
  c.fewshot = 9;  // first_n over 8 exemplars
  EXPECT_FALSE(build_gsm8k_requests(test, {}, c));
  EXPECT_EQ(cot_llama_exemplars().size(), 8u);
  EXPECT_EQ(gsm8k_task_spec(Gsm8kStyle::kCotLlama).num_fewshot, 8);
  EXPECT_EQ(gsm8k_task_spec(Gsm8kStyle::kGsm8k).num_fewshot, 5);
}

std::string data(const std::string& rel) { return testing::test_data_dir() + "/" + rel; }

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The real GSM8K splits: the test docs are scored, the train docs are the few-shot pool.
struct Gsm8kSplits {
  std::vector<Gsm8kDoc> test, train;
};

// Both splits from the test data; a split that does not load fails the test with its error
// (and gives nullopt).
std::optional<Gsm8kSplits> load_gsm8k_splits() {
  auto test = load_gsm8k_jsonl(data("gsm8k/test.jsonl"));
  auto train = load_gsm8k_jsonl(data("gsm8k/train.jsonl"));
  EXPECT_TRUE(test) << test.status().message();
  EXPECT_TRUE(train) << train.status().message();
  if (!test || !train) return std::nullopt;
  return Gsm8kSplits{std::move(*test), std::move(*train)};
}

TEST(Gsm8kPrompt, RealSplitsMatchReferencePrompts) {
  LLMQ_REQUIRE_TEST_DATA();
  const std::optional<Gsm8kSplits> splits = load_gsm8k_splits();
  ASSERT_TRUE(splits);
  const std::vector<Gsm8kDoc>& test = splits->test;
  const std::vector<Gsm8kDoc>& train = splits->train;
  ASSERT_EQ(test.size(), 1319u);
  ASSERT_EQ(train.size(), 7473u);
  Gsm8kConfig c;  // defaults: 5-shot, seed 1234
  auto req = build_gsm8k_requests(test, train, c);
  ASSERT_TRUE(req) << req.status().message();
  ASSERT_EQ(req->size(), 1319u);
  // scripts/gsm8k_reference.py prompts --test ... --train ... (seed 1234, 5-shot)
  EXPECT_EQ((*req)[0].exemplars, (std::vector<int64_t>{6374, 3610, 957, 61, 742}));
  EXPECT_EQ((*req)[1].exemplars, (std::vector<int64_t>{7462, 6610, 4769, 286, 5501}));
  EXPECT_EQ((*req)[2].exemplars, (std::vector<int64_t>{5677, 687, 806, 6279, 2905}));
  EXPECT_EQ((*req)[1318].exemplars, (std::vector<int64_t>{220, 4179, 6064, 5599, 5541}));
  EXPECT_EQ(gsm8k_prompt_hash((*req)[0].prompt), "d1b25cc1939ffada");
  EXPECT_EQ(gsm8k_prompt_hash((*req)[1].prompt), "3837579af68e3b0c");
  EXPECT_EQ(gsm8k_prompt_hash((*req)[2].prompt), "a8176a60615c9640");
  EXPECT_EQ(gsm8k_prompt_hash((*req)[1318].prompt), "69d8c87b15320009");
  // The hashed text is the concatenation the rules describe.
  std::string expect;
  for (int64_t i : (*req)[0].exemplars)
    expect += "Question: " + train[i].question + "\nAnswer: " + train[i].answer + "\n\n";
  expect += "Question: " + test[0].question + "\nAnswer:";
  EXPECT_EQ((*req)[0].prompt, expect);
  // --limit takes the first N docs; their exemplars do not depend on N.
  c.limit = 2;
  auto two = build_gsm8k_requests(test, train, c);
  ASSERT_TRUE(two);
  ASSERT_EQ(two->size(), 2u);
  EXPECT_EQ((*two)[1].prompt, (*req)[1].prompt);
  // Another seed and K: reference --seed 42 --fewshot 3.
  c.seed = 42;
  c.fewshot = 3;
  auto s42 = build_gsm8k_requests(test, train, c);
  ASSERT_TRUE(s42);
  EXPECT_EQ((*s42)[0].exemplars, (std::vector<int64_t>{5238, 912, 204}));
  EXPECT_EQ(gsm8k_prompt_hash((*s42)[0].prompt), "3dfdbe4a5b68fb12");
  EXPECT_EQ(gsm8k_prompt_hash((*s42)[1].prompt), "46a831381d7f894f");
  // cot-llama, reference --style cot-llama --chat llama3 / llama3.1.
  Gsm8kConfig cot;
  cot.style = Gsm8kStyle::kCotLlama;
  cot.limit = 2;
  cot.chat_template = ChatTemplateKind::kLlama3;
  auto r3 = build_gsm8k_requests(test, {}, cot);
  ASSERT_TRUE(r3);
  EXPECT_EQ(gsm8k_prompt_hash((*r3)[0].prompt), "176b88227dd2ddab");
  EXPECT_EQ(gsm8k_prompt_hash((*r3)[1].prompt), "3145b300a9a17e25");
  EXPECT_EQ((*r3)[0].target, "18");
  cot.chat_template = ChatTemplateKind::kLlama31;
  auto r31 = build_gsm8k_requests(test, {}, cot);
  ASSERT_TRUE(r31);
  EXPECT_EQ(gsm8k_prompt_hash((*r31)[0].prompt), "68b53f8c7db87a1d");
  EXPECT_EQ(gsm8k_prompt_hash((*r31)[1].prompt), "b5082ca55b29f46b");
}

TEST(Gsm8kPrompt, CotLlamaPromptTokenizesWithOneBos) {
  LLMQ_REQUIRE_TEST_DATA();
  // The shared tokenizer.json has no added_tokens; fill in the chat tokens with their
  // golden ids, as real Llama-3 checkpoints ship them.
  const nlohmann::json golden = nlohmann::json::parse(slurp(data("golden/tok_llama3.json")));
  nlohmann::json added = nlohmann::json::array();
  for (const std::string& t : llama3_chat_special_tokens())
    added.push_back({{"id", golden.at("special_tokens").at(t)}, {"content", t}, {"single_word", false},
                     {"lstrip", false}, {"rstrip", false}, {"normalized", false}, {"special", true}});
  std::string text = slurp(data("tokenizers/llama3/tokenizer.json"));
  const std::string empty = "\"added_tokens\":[]";
  const size_t at = text.find(empty);
  ASSERT_NE(at, std::string::npos) << "tokenizer.json layout changed";
  text.replace(at, empty.size(), "\"added_tokens\":" + added.dump());
  const std::string dir = testing::scratch_dir("gsm8k-llama3-tok");
  { std::ofstream(dir + "/tokenizer.json", std::ios::binary) << text; }
  auto tok = load_tokenizer_json(dir + "/tokenizer.json");
  ASSERT_TRUE(tok) << tok.status().message();
  fs::remove_all(dir);
  const std::vector<Gsm8kDoc> test = {{"What is 2 + 2?", "#### 4"}};
  Gsm8kConfig c;
  c.style = Gsm8kStyle::kCotLlama;  // 8 shots, Llama-3.1 system block
  auto req = build_gsm8k_requests(test, {}, c);
  ASSERT_TRUE(req);
  const std::vector<int32_t> ids = (*tok)->encode_with_specials((*req)[0].prompt);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], 128000);                                  // <|begin_of_text|>, once
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 128000), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 128006), 19);  // system + 17 turns + generation prompt
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 128009), 18);  // <|eot_id|> after system + 17 turns
}

TEST(Gsm8kData, BadJsonlNamesFileAndLine) {
  const std::string dir = testing::scratch_dir("gsm8k-bad");
  const std::string path = dir + "/bad.jsonl";
  {
    std::ofstream(path) << "{\"question\": \"q\", \"answer\": \"a\"}\n\n{\"question\": 3, \"answer\": \"a\"}\n";
  }
  auto r = load_gsm8k_jsonl(path);
  ASSERT_FALSE(r);
  EXPECT_NE(r.status().message().find(path + ":3: "), std::string::npos) << r.status().message();
  { std::ofstream(path) << "{\"question\": \"q\"\n"; }
  r = load_gsm8k_jsonl(path);
  ASSERT_FALSE(r);
  EXPECT_NE(r.status().message().find(":1: not valid JSON"), std::string::npos) << r.status().message();
  { std::ofstream(path) << "\n"; }
  EXPECT_FALSE(load_gsm8k_jsonl(path));
  EXPECT_FALSE(load_gsm8k_jsonl(dir + "/missing.jsonl"));
  fs::remove_all(dir);
}

// ---- scoring and JSON -------------------------------------------------------------------

TEST(Gsm8kScore, MeanStderrAndLmEvalLayout) {
  Gsm8kResult r;
  r.style = Gsm8kStyle::kGsm8k;
  r.fewshot = 5;
  r.docs_total = 1319;
  for (const char* out : {"#### 7", "#### 8", "7", "nothing"}) {
    Gsm8kSample s;
    s.request.target = "x\n#### 7";
    s.output = out;
    r.samples.push_back(s);
  }
  ASSERT_TRUE(score_gsm8k(r).is_ok());
  ASSERT_EQ(r.metrics.size(), 2u);
  EXPECT_DOUBLE_EQ(r.metrics[0].exact_match, 0.25);  // strict: only "#### 7"
  ASSERT_TRUE(r.metrics[0].stderr_.has_value());
  EXPECT_DOUBLE_EQ(*r.metrics[0].stderr_, 0.25);  // sqrt(var_ddof1 = 0.25) / sqrt(4)
  EXPECT_DOUBLE_EQ(r.metrics[1].exact_match, 0.5);  // flexible: "7" twice
  const nlohmann::ordered_json j = gsm8k_results_json(r);
  EXPECT_DOUBLE_EQ(j["results"]["gsm8k"]["exact_match,strict-match"].get<double>(), 0.25);
  EXPECT_DOUBLE_EQ(j["results"]["gsm8k"]["exact_match_stderr,strict-match"].get<double>(), 0.25);
  EXPECT_DOUBLE_EQ(j["results"]["gsm8k"]["exact_match,flexible-extract"].get<double>(), 0.5);
  EXPECT_TRUE(j["results"]["gsm8k"].contains("exact_match_stderr,flexible-extract"));
  EXPECT_EQ(j["n-shot"]["gsm8k"], 5);
  EXPECT_EQ(j["n-samples"]["gsm8k"]["original"], 1319);
  EXPECT_EQ(j["n-samples"]["gsm8k"]["effective"], 4);
  EXPECT_EQ(j["versions"]["gsm8k"], 3.0);
  r.samples.resize(1);  // one sample: stderr "N/A", as lm-eval writes it
  ASSERT_TRUE(score_gsm8k(r).is_ok());
  EXPECT_EQ(gsm8k_results_json(r)["results"]["gsm8k"]["exact_match_stderr,strict-match"], "N/A");
}

// ---- the pipeline on a real tiny model ----------------------------------------------------

struct Loaded {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
};

Loaded load_stories() {
  Loaded l;
  const std::string dir = data("models/stories260k");
  auto ckpt = HfCheckpoint::open(dir);
  EXPECT_TRUE(ckpt) << ckpt.status().message();
  if (!ckpt) return l;
  auto model = LlamaModel::load(*ckpt);
  auto tok = load_tokenizer(dir);
  EXPECT_TRUE(model && tok);
  if (!model || !tok) return l;
  l.model = std::make_unique<LlamaModel>(std::move(*model));
  l.tokenizer = std::move(*tok);
  return l;
}

// evaluate_gsm8k on the first `limit` test docs, without a progress bar in the test log.
Gsm8kConfig first_docs_quietly(int64_t limit) {
  Gsm8kConfig c;
  c.limit = limit;
  c.progress = false;
  return c;
}

TEST(GenerateUntil, StopsAtAStringInTheGreedyText) {
  LLMQ_REQUIRE_TEST_DATA();
  Loaded l = load_stories();
  ASSERT_TRUE(l.model);
  const std::vector<int32_t> prompt = l.tokenizer->encode("Once upon a time");
  GenerateConfig gc;
  gc.max_new_tokens = 48;
  auto full = generate_greedy(*l.model, prompt, gc);
  ASSERT_TRUE(full);
  const std::string text = l.tokenizer->decode(full->tokens);
  // A stop string from the middle of the greedy continuation.
  const size_t mid = text.find(' ', text.size() / 2);
  ASSERT_NE(mid, std::string::npos) << text;
  const std::string stop = text.substr(mid, 4);
  auto cut = generate_until(*l.model, *l.tokenizer, prompt, gc, {stop});
  ASSERT_TRUE(cut) << cut.status().message();
  EXPECT_EQ(cut->stop, StopReason::kStopString);
  EXPECT_EQ(cut->text, text.substr(0, text.find(stop)));
  EXPECT_LT(cut->tokens.size(), full->tokens.size());
  // Its tokens are a prefix of the unstopped run (greedy is deterministic).
  EXPECT_TRUE(std::equal(cut->tokens.begin(), cut->tokens.end(), full->tokens.begin()));
  auto none = generate_until(*l.model, *l.tokenizer, prompt, gc, {"\x01never"});
  ASSERT_TRUE(none);
  EXPECT_EQ(none->stop, full->stopped_at_eos ? StopReason::kEos : StopReason::kMaxTokens);
  EXPECT_EQ(none->tokens, full->tokens);
}

// The batched path (the GPU runner's shape: generate without stop strings, cut afterwards)
// gives the same samples as generating with the stops, on the same greedy model; here the
// generator is the CPU model itself, in batches of 2 over 5 docs (one short batch).
TEST(Gsm8kPipeline, BatchedGenerationMatchesStopAwareGeneration) {
  LLMQ_REQUIRE_TEST_DATA();
  Loaded l = load_stories();
  ASSERT_TRUE(l.model);
  const std::optional<Gsm8kSplits> splits = load_gsm8k_splits();
  ASSERT_TRUE(splits);
  Gsm8kConfig c = first_docs_quietly(5);
  c.batch = 2;
  c.max_gen_toks = 64;
  auto reference = evaluate_gsm8k(*l.model, *l.tokenizer, splits->test, splits->train, c);
  ASSERT_TRUE(reference) << reference.status().message();
  int calls = 0;
  const BatchGreedyFn cpu_batches = [&](const std::vector<std::vector<int32_t>>& prompts, int64_t max_new)
      -> Expected<std::vector<std::vector<int32_t>>> {
    ++calls;
    GenerateConfig gc;
    gc.max_new_tokens = max_new;
    gc.eos_ids = l.tokenizer->eos_ids();
    std::vector<std::vector<int32_t>> out;
    for (const auto& p : prompts) {
      LLMQ_ASSIGN_OR_RETURN(GenerateResult g, generate_greedy(*l.model, p, gc));
      out.push_back(std::move(g.tokens));
    }
    return out;
  };
  auto batched = evaluate_gsm8k_batched(cpu_batches, l.model->config().max_position_embeddings, *l.tokenizer,
                                        splits->test, splits->train, c);
  ASSERT_TRUE(batched) << batched.status().message();
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(gsm8k_samples_jsonl(*batched), gsm8k_samples_jsonl(*reference));
}

// finish_until cuts a stop-free continuation where generate_until stops: stop strings taken
// from the continuation itself (a word in the middle, one spanning tokens, one never seen).
TEST(Gsm8kPipeline, FinishUntilEqualsGenerateUntil) {
  LLMQ_REQUIRE_TEST_DATA();
  Loaded l = load_stories();
  ASSERT_TRUE(l.model);
  const std::vector<int32_t> prompt = l.tokenizer->encode("Once upon a time, there was a little girl");
  GenerateConfig gc;
  gc.max_new_tokens = 48;
  gc.eos_ids = l.tokenizer->eos_ids();
  auto free_run = generate_greedy(*l.model, prompt, gc);
  ASSERT_TRUE(free_run);
  const std::string text = l.tokenizer->decode(free_run->tokens);
  ASSERT_GT(text.size(), 40u) << text;
  const std::string middle = text.substr(text.size() / 2, 5), early = text.substr(10, 3);
  for (const std::vector<std::string>& until :
       {std::vector<std::string>{middle}, std::vector<std::string>{"@@never@@", early}, std::vector<std::string>{"@@never@@"}}) {
    auto direct = generate_until(*l.model, *l.tokenizer, prompt, gc, until);
    ASSERT_TRUE(direct);
    const GenerateUntilResult cut = finish_until(*l.tokenizer, free_run->tokens, gc.eos_ids, until);
    EXPECT_EQ(cut.tokens, direct->tokens) << until.back();
    EXPECT_EQ(cut.text, direct->text) << until.back();
    EXPECT_EQ(cut.stop, direct->stop) << until.back();
    EXPECT_EQ(direct->stop, until.back() == "@@never@@" ? free_run->stopped_at_eos ? StopReason::kEos
                                                                                   : StopReason::kMaxTokens
                                                        : StopReason::kStopString)
        << until.back();
  }
}

TEST(Gsm8kPipeline, Stories260kMechanicsAndDeterminism) {
  LLMQ_REQUIRE_TEST_DATA();
  Loaded l = load_stories();
  ASSERT_TRUE(l.model);
  const std::optional<Gsm8kSplits> splits = load_gsm8k_splits();
  ASSERT_TRUE(splits);
  Gsm8kConfig c = first_docs_quietly(3);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  auto a = evaluate_gsm8k(*l.model, *l.tokenizer, splits->test, splits->train, c);
  omp_set_num_threads(std::max(2, threads));
  auto b = evaluate_gsm8k(*l.model, *l.tokenizer, splits->test, splits->train, c);
  omp_set_num_threads(threads);
  ASSERT_TRUE(a) << a.status().message();
  ASSERT_TRUE(b) << b.status().message();
  const std::string log_a = gsm8k_samples_jsonl(*a);
  EXPECT_EQ(log_a, gsm8k_samples_jsonl(*b));  // independent of the thread count

  ASSERT_EQ(a->samples.size(), 3u);
  std::istringstream lines(log_a);
  std::string line;
  int n = 0;
  const char* hashes[] = {"d1b25cc1939ffada", "3837579af68e3b0c", "a8176a60615c9640"};  // reference
  while (std::getline(lines, line)) {
    const nlohmann::json s = nlohmann::json::parse(line);
    for (const char* key : {"doc_id", "exemplars", "prompt_hash", "prompt_tokens", "truncated_tokens", "gen_tokens",
                            "stop", "output", "target", "strict", "flexible", "strict_correct", "flexible_correct"})
      EXPECT_TRUE(s.contains(key)) << key << " missing in " << line;
    EXPECT_EQ(s["doc_id"], n);
    EXPECT_EQ(s["prompt_hash"], hashes[n]);
    EXPECT_EQ(s["target"], splits->test[n].answer);
    // 5-shot prompts are ~800 tokens here: left-truncated to 512 - 256 as HFLM does.
    EXPECT_EQ(s["prompt_tokens"], 512 - 256);
    EXPECT_GT(s["truncated_tokens"].get<int>(), 0);
    EXPECT_LE(s["gen_tokens"].get<int>(), 256);
    const std::string out = s["output"];
    for (const std::string& stop : a->until) EXPECT_EQ(out.find(stop), std::string::npos) << stop;
    ++n;
  }
  EXPECT_EQ(n, 3);
  EXPECT_NE(std::find(a->until.begin(), a->until.end(), "</s>"), a->until.end());

  const nlohmann::ordered_json j = gsm8k_results_json(*a);
  const auto& res = j["results"]["gsm8k"];
  for (const char* key : {"alias", "exact_match,strict-match", "exact_match_stderr,strict-match",
                          "exact_match,flexible-extract", "exact_match_stderr,flexible-extract"})
    EXPECT_TRUE(res.contains(key)) << key;
  const double strict = res["exact_match,strict-match"];
  EXPECT_GE(strict, 0.0);
  EXPECT_LE(strict, 1.0);
  EXPECT_EQ(j["n-samples"]["gsm8k"]["effective"], 3);
  EXPECT_EQ(j["configs"]["gsm8k"]["num_fewshot"], 5);

  // cot-llama needs the Llama-3 chat tokens, which this tokenizer lacks.
  c.style = Gsm8kStyle::kCotLlama;
  auto cot = evaluate_gsm8k(*l.model, *l.tokenizer, splits->test, splits->train, c);
  ASSERT_FALSE(cot);
  EXPECT_NE(cot.status().message().find("<|begin_of_text|>"), std::string::npos) << cot.status().message();
  c.style = Gsm8kStyle::kGsm8k;
  c.max_gen_toks = 512;  // no room left for a prompt
  EXPECT_FALSE(evaluate_gsm8k(*l.model, *l.tokenizer, splits->test, splits->train, c));
}

// ---- the CLI ------------------------------------------------------------------------------

using llmq::testing::expect_one_line_error;
using llmq::testing::RunResult;
using llmq::testing::run_llmq;

TEST(Gsm8kCli, EvalWritesCombinedJsonAndSampleLog) {
  LLMQ_REQUIRE_TEST_DATA();
  const std::string dir = testing::scratch_dir("gsm8k-cli");
  const std::string model = data("models/stories260k");
  const std::string gsm = data("gsm8k/test.jsonl");
  const std::string common = "eval --model " + model + " --gsm8k " + gsm + " --limit 2 --max-gen-toks 32";
  RunResult r = run_llmq(common + " --ppl " + data("text/tinystories_val.txt") + " --limit-tokens 2000 --seq-len 256" +
                         " --json " + dir + "/a.json --samples-out " + dir + "/a.jsonl");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("gsm8k"), std::string::npos) << r.out;
  const nlohmann::json j = nlohmann::json::parse(slurp(dir + "/a.json"));
  EXPECT_TRUE(j["perplexity"].contains("ppl"));
  EXPECT_TRUE(j["results"]["gsm8k"].contains("exact_match,strict-match"));
  EXPECT_TRUE(j["results"]["gsm8k"].contains("exact_match,flexible-extract"));
  EXPECT_EQ(j["n-samples"]["gsm8k"]["effective"], 2);
  const std::string log = slurp(dir + "/a.jsonl");
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 2);
  // Same command again (train.jsonl found beside the test file): byte-identical sample log.
  r = run_llmq(common + " --samples-out " + dir + "/b.jsonl");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(slurp(dir + "/b.jsonl"), log);

  expect_one_line_error(run_llmq(common + " --samples-out " + dir + "/b.jsonl"), "--force");
  expect_one_line_error(run_llmq(common + " --style nope"), "--style");
  expect_one_line_error(run_llmq(common + " --style cot-llama"), "cot-llama");
  expect_one_line_error(run_llmq("eval --model " + model + " --gsm8k " + dir + "/missing.jsonl"), dir + "/missing.jsonl");
  {
    std::ofstream(dir + "/bad.jsonl") << "{\"question\": \"q\", \"answer\": 1}\n";
  }
  expect_one_line_error(run_llmq("eval --model " + model + " --gsm8k " + dir + "/bad.jsonl --fewshot 0"),
                        dir + "/bad.jsonl:1:");
  {
    std::ofstream(dir + "/good.jsonl") << "{\"question\": \"q\", \"answer\": \"#### 1\"}\n";
  }
  expect_one_line_error(run_llmq("eval --model " + model + " --gsm8k " + dir + "/good.jsonl"), "train.jsonl");
  expect_one_line_error(run_llmq("eval --model " + model), "nothing to do");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace llmq
