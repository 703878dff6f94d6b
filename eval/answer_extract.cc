// PCRE2 with Python `re` semantics, lm-eval's regex filter and exact_match; see answer_extract.h.
#include "eval/answer_extract.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/check.h"

namespace llmq {

struct PyRegex::Impl {
  std::string pattern;
  pcre2_code* code = nullptr;
  int groups = 0;
  ~Impl() { pcre2_code_free(code); }
};

Expected<PyRegex> PyRegex::compile(const std::string& pattern) {
  pcre2_compile_context* cctx = pcre2_compile_context_create(nullptr);
  LLMQ_CHECK(cctx != nullptr, "pcre2 allocation failed");
  pcre2_set_newline(cctx, PCRE2_NEWLINE_LF);  // Python: only '\n' is a line end
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &offset, cctx);
  pcre2_compile_context_free(cctx);
  if (code == nullptr) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(error, buf, sizeof buf);
    return Status::error("invalid regex '" + pattern + "': " + reinterpret_cast<const char*>(buf) + " at offset " +
                         std::to_string(offset));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // a speed-up only; same matches without it
  auto impl = std::make_shared<Impl>();
  impl->pattern = pattern;
  impl->code = code;
  uint32_t captures = 0;
  pcre2_pattern_info(code, PCRE2_INFO_CAPTURECOUNT, &captures);
  impl->groups = static_cast<int>(captures);
  return PyRegex(std::move(impl));
}

const std::string& PyRegex::pattern() const { return impl_->pattern; }
int PyRegex::group_count() const { return impl_->groups; }

namespace {

// Calls on_match(ovector) for each match of code in text, Python 3.7+ style: after an empty
// match, retry at the same offset anchored and non-empty, else step one code point.
template <typename F>
void for_each_match(const pcre2_code* code, std::string_view text, F&& on_match) {
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  LLMQ_CHECK(md != nullptr, "pcre2 allocation failed");
  const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const PCRE2_SIZE n = text.size();
  PCRE2_SIZE offset = 0;
  uint32_t options = 0;
  while (offset <= n) {
    const int rc = pcre2_match(code, subject, n, offset, options, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) {
      if (options == 0) break;
      // No non-empty match here after an empty one: advance one code point (UTF-8 lead byte).
      options = 0;
      ++offset;
      while (offset < n && (static_cast<unsigned char>(text[offset]) & 0xC0) == 0x80) ++offset;
      continue;
    }
    LLMQ_CHECK(rc >= 0, "pcre2_match failed with code " << rc);
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    on_match(ov);
    offset = ov[1];
    options = ov[0] == ov[1] ? (PCRE2_NOTEMPTY_ATSTART | PCRE2_ANCHORED) : 0;
  }
  pcre2_match_data_free(md);
}

}  // namespace

std::vector<std::vector<std::string>> PyRegex::find_all(std::string_view text) const {
  std::vector<std::vector<std::string>> out;
  const int groups = impl_->groups;
  for_each_match(impl_->code, text, [&](const PCRE2_SIZE* ov) {
    std::vector<std::string> m(groups + 1);
    for (int g = 0; g <= groups; ++g) {
      if (ov[2 * g] == PCRE2_UNSET) continue;  // group did not participate: ""
      m[g] = std::string(text.substr(ov[2 * g], ov[2 * g + 1] - ov[2 * g]));
    }
    out.push_back(std::move(m));
  });
  return out;
}

std::string PyRegex::sub(std::string_view text, std::string_view replacement) const {
  std::string out;
  size_t last = 0;
  for_each_match(impl_->code, text, [&](const PCRE2_SIZE* ov) {
    out.append(text.substr(last, ov[0] - last));
    out.append(replacement);
    last = ov[1];
  });
  out.append(text.substr(last));
  return out;
}

std::string_view strip_ascii(std::string_view s) {
  constexpr std::string_view kSpace = " \t\n\r\v\f";
  const size_t b = s.find_first_not_of(kSpace);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(kSpace) - b + 1);
}

Expected<AnswerScorer> AnswerScorer::create(const ScoringSpec& spec) {
  AnswerScorer s;
  s.spec_ = spec;
  for (const RegexFilterSpec& f : spec.filters) {
    LLMQ_ASSIGN_OR_RETURN(PyRegex re, PyRegex::compile(f.pattern));
    s.filters_.push_back(std::move(re));
  }
  for (const std::string& p : spec.regexes_to_ignore) {
    LLMQ_ASSIGN_OR_RETURN(PyRegex re, PyRegex::compile(p));
    s.ignore_.push_back(std::move(re));
  }
  return s;
}

std::string AnswerScorer::extract(size_t i, std::string_view response) const {
  LLMQ_CHECK(i < filters_.size(), "filter index " << i << " out of range");
  const PyRegex& re = filters_[i];
  const std::vector<std::vector<std::string>> matches = re.find_all(response);
  if (matches.empty()) return spec_.fallback;
  const int64_t n = static_cast<int64_t>(matches.size());
  int64_t k = spec_.filters[i].group_select;
  if (k < 0) k += n;                                  // Python negative indexing
  if (k < 0 || k >= n) return spec_.fallback;         // the harness would raise IndexError
  const std::vector<std::string>& m = matches[k];
  std::string_view picked;
  if (re.group_count() == 0) {
    picked = m[0];  // findall returns whole matches
  } else if (re.group_count() == 1) {
    picked = m[1];  // ... the one group
  } else {
    bool found = false;  // ... tuples: the first non-empty group
    for (int g = 1; g <= re.group_count() && !found; ++g) {
      if (!m[g].empty()) {
        picked = m[g];
        found = true;
      }
    }
    if (!found) return spec_.fallback;
  }
  return std::string(strip_ascii(picked));
}

std::string AnswerScorer::normalise(std::string_view s) const {
  std::string out(s);
  for (const PyRegex& re : ignore_) out = re.sub(out, "");
  if (spec_.ignore_case) {
    for (char& c : out)
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

}  // namespace llmq
