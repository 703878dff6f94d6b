// Answer extraction and exact-match scoring as lm-evaluation-harness does it for generate_until
// tasks such as gsm8k (sources: lm_eval/filters/extraction.py RegexFilter, filters/selection.py
// take_first, api/metrics.py exact_match_hf_evaluate):
//   filter: m = re.findall(pattern, response); none -> fallback "[invalid]"; else
//     m = m[group_select] (Python indexing, -1 = last); a tuple (pattern with 2+ groups) ->
//     its first non-empty group; then str.strip(). take_first keeps the one response.
//   exact_match: for each regex in regexes_to_ignore, in order, re.sub(regex, "", s) on the
//     prediction and on the reference alike; then lower() both (ignore_case); equal -> 1.
//
// Regexes are PCRE2, set up to behave as Python's `re` on str for the patterns the harness
// uses: UTF mode (a '.' is one code point; invalid UTF-8 in a model output is tolerated,
// PCRE2_MATCH_INVALID_UTF), Unicode classes (PCRE2_UCP, as Python's \d \w \s), newline = LF
// only ('.' stops at '\n' and nothing else, '$' matches at the end and before a final '\n',
// as in Python), inline flags such as (?s) supported. Iteration is Python 3.7+'s: after an
// empty match the next attempt at the same position must be non-empty, so findall/sub give
// the same sequence of matches. std::regex was not used: ECMAScript has no inline (?s), its
// '$' never matches before a final newline, and libstdc++'s recursive matcher can overflow
// the stack on long model outputs.
// Known differences: lower() and strip() act on ASCII only (Python's act on all of Unicode);
// the extracted answers are made of [-$0-9.,] or the fallback, where the two agree. Where a
// tuple match has only empty groups the harness raises IndexError; here the fallback is used.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace llmq {

// A compiled regex with Python `re` semantics (see the file comment). Immutable and safe to
// use from several threads at once.
class PyRegex {
 public:
  // Error: the PCRE2 message and offset, naming the pattern.
  static Expected<PyRegex> compile(const std::string& pattern);

  const std::string& pattern() const;
  int group_count() const;
  // re.finditer: every match, left to right, as its groups 0..group_count() ("" for a group
  // that did not take part).
  std::vector<std::vector<std::string>> find_all(std::string_view text) const;
  // re.sub(pattern, replacement, text) with a literal replacement.
  std::string sub(std::string_view text, std::string_view replacement) const;

 private:
  struct Impl;
  explicit PyRegex(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// Python str.strip() on ASCII whitespace.
std::string_view strip_ascii(std::string_view s);

struct RegexFilterSpec {
  std::string name;     // e.g. "strict-match"
  std::string pattern;  // Python regex source
  int group_select = 0;
};

struct ScoringSpec {
  std::vector<RegexFilterSpec> filters;         // in the order results are reported
  std::vector<std::string> regexes_to_ignore;   // applied in order
  bool ignore_case = true;
  std::string fallback = "[invalid]";
};

// The filters and the exact_match metric of one task, with the regexes compiled once.
class AnswerScorer {
 public:
  static Expected<AnswerScorer> create(const ScoringSpec& spec);

  const ScoringSpec& spec() const { return spec_; }
  // RegexFilter + take_first of filter `i` on one response.
  std::string extract(size_t i, std::string_view response) const;
  // The regexes_to_ignore substitutions, then lower() when ignore_case.
  std::string normalise(std::string_view s) const;
  bool exact_match(std::string_view prediction, std::string_view reference) const {
    return normalise(prediction) == normalise(reference);
  }

 private:
  ScoringSpec spec_;
  std::vector<PyRegex> filters_;
  std::vector<PyRegex> ignore_;
};

}  // namespace llmq
