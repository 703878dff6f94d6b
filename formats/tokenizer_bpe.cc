// HF tokenizer.json BPE tokenizers, in the two flavours Llama checkpoints ship:
//
//   byte-level (Llama-3): pre-tokenizer Sequence[Split(regex, Isolated), ByteLevel]; every
//     pre-token's bytes map to the GPT-2 byte alphabet, BPE with ignore_merges (a pre-token
//     that is itself a token is emitted whole), merges applied by rank.
//   sentencepiece-style (Llama-2 conversions, the tiny models): "▁" for spaces, no split, BPE
//     over Unicode characters with byte_fallback (<0xNN> tokens for characters not in vocab).
//
// Pipeline of one encode: split the text on added tokens (aho-corasick-like leftmost-longest,
// as HF's AddedVocabulary) -> per ordinary segment: Metaspace ("▁") -> pre-tokenize (PCRE2) ->
// BPE per pre-token (cached) -> ids.
//
// The sentencepiece-style flavour follows what transformers (v5, LlamaTokenizer with
// legacy=false) does with these files, which is what the reference ids were made with, not
// the literal tokenizer.json normalizer: "▁" is prepended only to the segment at the start of
// the text and only when it does not already start with "▁" (Metaspace prepend_scheme
// "first"), and characters that are neither in the vocab nor byte-fallback-able are dropped
// (transformers builds that BPE without unk_token). Decoding derives from the flavour
// (ByteLevel, or Replace "▁"->" " + ByteFallback + Fuse + Strip one leading space); the
// file's decoder block is not interpreted.
//
// In byte-level mode the vocab is keyed by raw bytes (tokens converted back from the GPT-2
// alphabet at load), so text bytes are looked up without re-encoding them.
#include <algorithm>
#include <array>
#include <cstdio>
#include <mutex>
#include <queue>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "formats/tokenizer_impl.h"

namespace llmq {
namespace {

using nlohmann::json;

// Token ids are array indices: refuse files that would make us allocate absurd tables.
constexpr int64_t kMaxTokenId = (int64_t{1} << 22) - 1;
// Pre-tokens up to this many bytes are cached (long ones are rare and would bloat the cache).
constexpr size_t kMaxCachedWordBytes = 64;
// The cache is dropped and restarted when it reaches this many words (bounded memory).
constexpr size_t kMaxCacheEntries = 1 << 17;
constexpr uint32_t kInvalidCodepoint = 0xFFFFFFFFu;
constexpr char kMetaspace[] = "\xE2\x96\x81";  // U+2581 "▁"
constexpr size_t kMetaspaceLen = 3;
constexpr char kReplacementChar[] = "\xEF\xBF\xBD";  // U+FFFD
// GPT-2's pre-tokenizer regex, used by ByteLevel with use_regex=true.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ---------------------------------------------------------------------------------------------
// UTF-8

// Decodes the sequence at s[i]: returns its length and sets *cp. An ill-formed sequence
// returns the length of its maximal prefix that could begin a valid one (>= 1, the unit that
// Unicode's "maximal subpart" replacement uses) and sets *cp = kInvalidCodepoint.
size_t decode_utf8(std::string_view s, size_t i, uint32_t* cp) {
  const auto b0 = static_cast<uint8_t>(s[i]);
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  size_t n = 0;
  uint32_t c = 0;
  uint8_t lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2, c = b0 & 0x1Fu;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3, c = b0 & 0x0Fu;
    if (b0 == 0xE0) lo = 0xA0;  // overlong
    if (b0 == 0xED) hi = 0x9F;  // surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4, c = b0 & 0x07u;
    if (b0 == 0xF0) lo = 0x90;  // overlong
    if (b0 == 0xF4) hi = 0x8F;  // > U+10FFFF
  } else {
    *cp = kInvalidCodepoint;
    return 1;
  }
  for (size_t k = 1; k < n; ++k) {
    if (i + k >= s.size()) {
      *cp = kInvalidCodepoint;
      return k;
    }
    const auto b = static_cast<uint8_t>(s[i + k]);
    if (b < lo || b > hi) {
      *cp = kInvalidCodepoint;
      return k;
    }
    lo = 0x80, hi = 0xBF;
    c = (c << 6) | (b & 0x3Fu);
  }
  *cp = c;
  return n;
}

bool is_valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    uint32_t cp = 0;
    i += decode_utf8(s, i, &cp);
    if (cp == kInvalidCodepoint) return false;
  }
  return true;
}

// Rust's String::from_utf8_lossy (what HF decoders end with): each maximal ill-formed
// subpart becomes one U+FFFD.
std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    uint32_t cp = 0;
    const size_t n = decode_utf8(s, i, &cp);
    if (cp == kInvalidCodepoint) {
      out += kReplacementChar;
    } else {
      out.append(s.data() + i, n);
    }
    i += n;
  }
  return out;
}

// For error messages: a token shown on one line, control characters escaped, long ones cut.
std::string shown(std::string_view s) {
  constexpr size_t kMaxShown = 60;
  std::string out = "\"";
  for (size_t i = 0; i < s.size() && i < kMaxShown; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7F || c == '"' || c == '\\') {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > kMaxShown) out += "...";
  return out + "\"";
}

// ---------------------------------------------------------------------------------------------
// GPT-2 byte alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes are
// shifted to U+0100.. in byte order, so every byte is one visible character.

struct ByteAlphabet {
  std::array<uint32_t, 256> byte_to_cp{};
  std::unordered_map<uint32_t, uint8_t> cp_to_byte;
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet = [] {
    ByteAlphabet a;
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      a.byte_to_cp[b] = printable ? b : next++;
      a.cp_to_byte[a.byte_to_cp[b]] = static_cast<uint8_t>(b);
    }
    return a;
  }();
  return alphabet;
}

// A token written in the GPT-2 alphabet, as raw bytes; nullopt when a character is outside it.
std::optional<std::string> byte_level_to_bytes(std::string_view token) {
  const ByteAlphabet& a = byte_alphabet();
  std::string out;
  out.reserve(token.size());
  for (size_t i = 0; i < token.size();) {
    uint32_t cp = 0;
    i += decode_utf8(token, i, &cp);
    const auto it = a.cp_to_byte.find(cp);
    if (it == a.cp_to_byte.end()) return std::nullopt;
    out += static_cast<char>(it->second);
  }
  return out;
}

// "<0x41>" -> 0x41, the byte-fallback token spelling.
std::optional<uint8_t> parse_byte_token(std::string_view t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return std::nullopt;
  int value = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = t[i];
    int d = 0;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else {
      return std::nullopt;
    }
    value = value * 16 + d;
  }
  return static_cast<uint8_t>(value);
}

// ---------------------------------------------------------------------------------------------
// PCRE2 split regex. UTF + UCP give \p{L}, \p{N} and Unicode \s; MATCH_INVALID_UTF lets text
// that is not valid UTF-8 through (invalid bytes never match, so they end up in the gaps).

class SplitRegex {
 public:
  struct MatchScratch {
    MatchScratch()
        : data(pcre2_match_data_create(1, nullptr)),
          context(pcre2_match_context_create(nullptr)),
          // Long whitespace runs backtrack through \s+(?!\S): more than JIT's 32 KiB default.
          stack(pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr)) {
      LLMQ_CHECK(data != nullptr && context != nullptr, "pcre2 allocation failed");
      if (stack != nullptr) pcre2_jit_stack_assign(context, nullptr, stack);
    }
    ~MatchScratch() {
      pcre2_jit_stack_free(stack);
      pcre2_match_context_free(context);
      pcre2_match_data_free(data);
    }
    MatchScratch(const MatchScratch&) = delete;
    MatchScratch& operator=(const MatchScratch&) = delete;
    pcre2_match_data* data;  // one ovector pair: only the whole match is used
    pcre2_match_context* context;
    pcre2_jit_stack* stack;
  };

  SplitRegex(const SplitRegex&) = delete;
  SplitRegex& operator=(const SplitRegex&) = delete;
  ~SplitRegex() { pcre2_code_free(code_); }

  // Error: the PCRE2 message with the offset, without the file name.
  static Expected<std::unique_ptr<SplitRegex>> compile(const std::string& pattern, bool literal) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF;
    if (literal) options |= PCRE2_LITERAL;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     options, &error, &offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(error, buf, sizeof buf);
      return Status::error("invalid split regex " + shown(pattern) + ": " +
                           reinterpret_cast<const char*>(buf) + " at offset " +
                           std::to_string(offset));
    }
    // JIT is a speed-up only; the interpreter gives the same matches when it is unavailable.
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    return std::unique_ptr<SplitRegex>(new SplitRegex(code));
  }

  // Appends the [begin, end) byte ranges of the non-empty matches in text.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
    // Per-thread match state: a JIT stack is thread-specific and costs an mmap to create.
    static thread_local MatchScratch scratch;
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t offset = 0;
    while (offset < text.size()) {
      const int rc = pcre2_match(code_, subject, text.size(), offset, 0, scratch.data, scratch.context);
      // rc >= 0 is a match (0: only the whole-match pair fitted, all we ask for). NOMATCH ends
      // the scan; any other failure (a match or depth limit hit by a pathological pattern from
      // the file) leaves the rest of the text as one gap.
      if (rc < 0) break;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(scratch.data);
      const size_t begin = ov[0], end = ov[1];
      if (end > begin) {
        out.emplace_back(begin, end);
        offset = end;
      } else {
        // An empty match splits nothing: step over one character and search again.
        uint32_t cp = 0;
        offset = begin + decode_utf8(text, begin, &cp);
      }
    }
  }

 private:
  explicit SplitRegex(pcre2_code* code) : code_(code) {}
  pcre2_code* code_;
};

// ---------------------------------------------------------------------------------------------
// Added tokens: leftmost, then longest match, as HF's AddedVocabulary.

class AddedTokenMatcher {
 public:
  void add(const std::string& content, int32_t id) {
    if (content.empty()) return;
    auto& list = by_first_byte_[static_cast<uint8_t>(content[0])];
    list.emplace_back(content, id);
    std::stable_sort(list.begin(), list.end(), [](const auto& a, const auto& b) {
      return a.first.size() > b.first.size();
    });
    empty_ = false;
  }
  bool empty() const { return empty_; }

  struct Match {
    size_t begin = std::string::npos;
    size_t length = 0;
    int32_t id = -1;
  };
  // The first match at or after `from`; begin == npos when there is none.
  Match find(std::string_view text, size_t from) const {
    for (size_t i = from; i < text.size(); ++i) {
      const auto& list = by_first_byte_[static_cast<uint8_t>(text[i])];
      for (const auto& [content, id] : list) {  // longest first
        if (text.compare(i, content.size(), content) == 0) return {i, content.size(), id};
      }
    }
    return {};
  }

 private:
  std::array<std::vector<std::pair<std::string, int32_t>>, 256> by_first_byte_;
  bool empty_ = true;
};

// ---------------------------------------------------------------------------------------------
// The tokenizer.

enum class PrependScheme { kAlways, kFirst, kNever };

struct SplitStep {
  std::unique_ptr<SplitRegex> regex;
  bool keep_matches = true;  // Isolated keeps matches and gaps; Removed keeps only the gaps
};

struct MergeRule {
  int32_t rank;
  int32_t id;  // the merged token
};

inline uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

class BpeTokenizer final : public VocabTokenizer {
 public:
  std::vector<int32_t> encode_ordinary(const std::string& text) const override {
    return encode_split(text, nonspecial_added_);
  }
  std::vector<int32_t> encode_with_specials(const std::string& text) const override {
    return encode_split(text, all_added_);
  }
  std::string decode(const std::vector<int32_t>& ids) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(id_text_.size()); }
  std::optional<int32_t> token_to_id(const std::string& token) const override;

 private:
  friend Expected<std::unique_ptr<VocabTokenizer>> parse_bpe(const json& doc,
                                                             const std::string& origin);

  std::vector<int32_t> encode_split(const std::string& text, const AddedTokenMatcher& added) const;
  void encode_segment(std::string_view segment, bool at_text_start, std::vector<int32_t>& out) const;
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  void bpe_merge(std::vector<int32_t>& symbols) const;
  void push_unknown(std::vector<int32_t>& symbols, bool& last_was_unk) const;

  // Model.
  bool byte_level_ = false;                         // vocab keyed by raw bytes
  std::unordered_map<std::string, int32_t> vocab_;  // [n_vocab] token text -> id
  std::unordered_map<std::string, int32_t> unmapped_vocab_;  // byte-level: tokens outside the alphabet
  std::unordered_map<uint64_t, MergeRule> merges_;  // [n_merges] (left id, right id) -> rule
  std::array<int32_t, 256> byte_ids_{};             // byte-level: the token of each byte, -1 none
  std::array<int32_t, 256> fallback_ids_{};         // <0xNN> tokens, -1 none
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  bool fuse_unk_ = false;
  std::optional<int32_t> unk_id_;  // unset: unknown characters are dropped

  // Pipeline.
  bool metaspace_ = false;  // spaces are "▁"
  PrependScheme prepend_ = PrependScheme::kNever;
  bool metaspace_split_ = false;  // Metaspace split=true: a pre-token starts at each "▁"
  std::vector<SplitStep> splits_;

  // Added tokens and decoding.
  AddedTokenMatcher all_added_;
  AddedTokenMatcher nonspecial_added_;
  std::unordered_map<std::string, int32_t> added_ids_;  // content -> id
  std::vector<std::string> id_text_;  // [vocab_size] what decode emits (raw bytes in byte-level)
  std::vector<uint8_t> id_is_byte_;   // [vocab_size] 1 + byte for <0xNN> tokens, 0 otherwise

  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

std::vector<int32_t> BpeTokenizer::encode_split(const std::string& text,
                                                const AddedTokenMatcher& added) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  const std::string_view view(text);
  size_t pos = 0;
  while (pos < view.size()) {
    const AddedTokenMatcher::Match m =
        added.empty() ? AddedTokenMatcher::Match{} : added.find(view, pos);
    const size_t end = m.begin == std::string::npos ? view.size() : m.begin;
    if (end > pos) encode_segment(view.substr(pos, end - pos), pos == 0, out);
    if (m.begin == std::string::npos) break;
    out.push_back(m.id);
    pos = m.begin + m.length;
  }
  return out;
}

void BpeTokenizer::encode_segment(std::string_view segment, bool at_text_start,
                                  std::vector<int32_t>& out) const {
  std::string spaced;
  if (metaspace_) {
    // Metaspace: spaces become "▁", and a "▁" is prepended (per scheme) unless already there.
    const bool starts_with_space = segment[0] == ' ' || segment.compare(0, kMetaspaceLen, kMetaspace) == 0;
    const bool prepend = !starts_with_space && (prepend_ == PrependScheme::kAlways ||
                                                (prepend_ == PrependScheme::kFirst && at_text_start));
    spaced.reserve(segment.size() + segment.size() / 2 + kMetaspaceLen);
    if (prepend) spaced += kMetaspace;
    for (char c : segment) {
      if (c == ' ') {
        spaced += kMetaspace;
      } else {
        spaced += c;
      }
    }
    segment = spaced;
  }

  // Pre-tokens as byte ranges of `segment`, refined by each split step in turn.
  std::vector<std::pair<size_t, size_t>> pieces{{0, segment.size()}};
  if (metaspace_split_) {
    std::vector<std::pair<size_t, size_t>> next;
    size_t begin = 0;
    for (size_t i = segment.find(kMetaspace, 1); i != std::string_view::npos;
         i = segment.find(kMetaspace, i + kMetaspaceLen)) {
      next.emplace_back(begin, i);
      begin = i;
    }
    next.emplace_back(begin, segment.size());
    pieces.swap(next);
  }
  std::vector<std::pair<size_t, size_t>> matches, next;
  for (const SplitStep& step : splits_) {
    next.clear();
    for (const auto& [begin, end] : pieces) {
      matches.clear();
      step.regex->find_all(segment.substr(begin, end - begin), matches);
      size_t cursor = begin;
      for (const auto& [mb, me] : matches) {
        if (begin + mb > cursor) next.emplace_back(cursor, begin + mb);  // gap
        if (step.keep_matches) next.emplace_back(begin + mb, begin + me);
        cursor = begin + me;
      }
      if (end > cursor) next.emplace_back(cursor, end);
    }
    pieces.swap(next);
  }
  for (const auto& [begin, end] : pieces) encode_word(segment.substr(begin, end - begin), out);
}

void BpeTokenizer::push_unknown(std::vector<int32_t>& symbols, bool& last_was_unk) const {
  if (!unk_id_) return;  // dropped
  if (!(fuse_unk_ && last_was_unk)) symbols.push_back(*unk_id_);
  last_was_unk = true;
}

void BpeTokenizer::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    const auto it = vocab_.find(std::string(word));
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    const auto it = cache_.find(std::string(word));
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }

  // Initial symbols: one per byte (byte-level) or per character, with byte fallback.
  std::vector<int32_t> symbols;
  symbols.reserve(word.size());
  bool last_was_unk = false;
  if (byte_level_) {
    for (char c : word) {
      const int32_t id = byte_ids_[static_cast<uint8_t>(c)];
      if (id >= 0) {
        symbols.push_back(id);
        last_was_unk = false;
      } else {
        push_unknown(symbols, last_was_unk);
      }
    }
  } else {
    std::string ch;
    for (size_t i = 0; i < word.size();) {
      uint32_t cp = 0;
      const size_t n = decode_utf8(word, i, &cp);
      ch.assign(word.data() + i, n);
      i += n;
      const auto it = vocab_.find(ch);
      if (it != vocab_.end()) {
        symbols.push_back(it->second);
        last_was_unk = false;
        continue;
      }
      bool all_bytes = byte_fallback_;
      for (size_t k = 0; all_bytes && k < n; ++k) all_bytes = fallback_ids_[static_cast<uint8_t>(ch[k])] >= 0;
      if (all_bytes) {
        for (size_t k = 0; k < n; ++k) symbols.push_back(fallback_ids_[static_cast<uint8_t>(ch[k])]);
        last_was_unk = false;
      } else {
        push_unknown(symbols, last_was_unk);
      }
    }
  }
  bpe_merge(symbols);
  out.insert(out.end(), symbols.begin(), symbols.end());

  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.emplace(std::string(word), std::move(symbols));
  }
}

// Applies merges lowest rank first, leftmost first among equal ranks (HF's BPE::merge_word),
// with a heap over candidate pairs and a linked list of live symbols: O(n log n) even for the
// whole-text words of the sentencepiece flavour.
void BpeTokenizer::bpe_merge(std::vector<int32_t>& symbols) const {
  const int n = static_cast<int>(symbols.size());
  if (n < 2 || merges_.empty()) return;
  std::vector<int> prev(n), next(n);  // [n] neighbours of live symbols, -1 at the ends
  std::vector<char> alive(n, 1);      // [n]
  for (int i = 0; i < n; ++i) prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;

  struct Candidate {
    int32_t rank;
    int pos;  // index of the left symbol
  };
  const auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> queue(later);
  const auto push_pair = [&](int left) {
    if (left < 0 || next[left] < 0) return;
    const auto it = merges_.find(pair_key(symbols[left], symbols[next[left]]));
    if (it != merges_.end()) queue.push({it->second.rank, left});
  };
  for (int i = 0; i + 1 < n; ++i) push_pair(i);

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    const int left = top.pos;
    if (!alive[left] || next[left] < 0) continue;
    const int right = next[left];
    // Stale entry: the pair at `left` changed since it was queued (ranks are unique per pair).
    const auto it = merges_.find(pair_key(symbols[left], symbols[right]));
    if (it == merges_.end() || it->second.rank != top.rank) continue;
    symbols[left] = it->second.id;
    alive[right] = 0;
    next[left] = next[right];
    if (next[right] >= 0) prev[next[right]] = left;
    push_pair(prev[left]);
    push_pair(left);
  }
  int w = 0;
  for (int i = 0; i >= 0; i = next[i]) symbols[w++] = symbols[i];
  symbols.resize(w);
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  if (byte_level_) {
    for (int32_t id : ids) {
      if (id >= 0 && id < vocab_size()) out += id_text_[id];
    }
    return utf8_lossy(out);
  }
  // Replace "▁" -> " ", ByteFallback (a run of <0xNN> tokens becomes its bytes if they are
  // valid UTF-8, else one U+FFFD per byte), Fuse, Strip one leading space.
  std::string bytes;
  const auto flush_bytes = [&] {
    if (is_valid_utf8(bytes)) {
      out += bytes;
    } else {
      for (size_t i = 0; i < bytes.size(); ++i) out += kReplacementChar;
    }
    bytes.clear();
  };
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;
    if (byte_fallback_ && id_is_byte_[id]) {
      bytes += static_cast<char>(id_is_byte_[id] - 1);
      continue;
    }
    flush_bytes();
    const std::string& text = id_text_[id];
    if (!metaspace_) {
      out += text;
      continue;
    }
    for (size_t i = 0; i < text.size();) {
      if (text.compare(i, kMetaspaceLen, kMetaspace) == 0) {
        out += ' ';
        i += kMetaspaceLen;
      } else {
        out += text[i++];
      }
    }
  }
  flush_bytes();
  if (metaspace_ && prepend_ != PrependScheme::kNever && !out.empty() && out[0] == ' ') {
    out.erase(0, 1);
  }
  return out;
}

std::optional<int32_t> BpeTokenizer::token_to_id(const std::string& token) const {
  if (const auto it = added_ids_.find(token); it != added_ids_.end()) return it->second;
  if (byte_level_) {
    if (const auto it = unmapped_vocab_.find(token); it != unmapped_vocab_.end()) return it->second;
    const std::optional<std::string> bytes = byte_level_to_bytes(token);
    if (!bytes) return std::nullopt;
    const auto it = vocab_.find(*bytes);
    return it == vocab_.end() ? std::nullopt : std::optional<int32_t>(it->second);
  }
  const auto it = vocab_.find(token);
  return it == vocab_.end() ? std::nullopt : std::optional<int32_t>(it->second);
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json parsing. Every check says what is wrong in one line; the caller prefixes the
// origin (file path).

const json* member(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  const auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

std::string type_of(const json& obj) {
  const json* t = member(obj, "type");
  return t != nullptr && t->is_string() ? t->get<std::string>() : std::string();
}

bool bool_or(const json& obj, const char* key, bool fallback) {
  const json* v = member(obj, key);
  return v != nullptr && v->is_boolean() ? v->get<bool>() : fallback;
}

// normalizer: the sentencepiece-style pair Prepend("▁") + Replace(" " -> "▁"), in either
// order, alone or in a Sequence; anything else is not supported.
Status parse_normalizer(const json& n, bool* metaspace, PrependScheme* prepend) {
  std::vector<const json*> items;
  if (type_of(n) == "Sequence") {
    const json* list = member(n, "normalizers");
    if (list == nullptr || !list->is_array()) return Status::error("normalizer Sequence has no normalizers list");
    for (const json& item : *list) items.push_back(&item);
  } else {
    items.push_back(&n);
  }
  for (const json* item : items) {
    const std::string type = type_of(*item);
    if (type == "Prepend") {
      const json* p = member(*item, "prepend");
      if (p == nullptr || !p->is_string() || p->get<std::string>() != kMetaspace) {
        return Status::error("unsupported normalizer: Prepend of something other than \"\xE2\x96\x81\"");
      }
      *metaspace = true;
      // transformers' LlamaTokenizer (legacy=false) prepends at the start of the text only.
      *prepend = PrependScheme::kFirst;
    } else if (type == "Replace") {
      const json* pattern = member(*item, "pattern");
      const json* from = pattern != nullptr ? member(*pattern, "String") : nullptr;
      const json* to = member(*item, "content");
      if (from == nullptr || to == nullptr || !from->is_string() || !to->is_string() ||
          from->get<std::string>() != " " || to->get<std::string>() != kMetaspace) {
        return Status::error("unsupported normalizer: Replace other than \" \" -> \"\xE2\x96\x81\"");
      }
      *metaspace = true;
    } else {
      return Status::error("unsupported normalizer " + shown(type.empty() ? "(no type)" : type));
    }
  }
  return Status::ok();
}

Status parse_pre_tokenizer(const json& p, bool* byte_level, bool* metaspace,
                           PrependScheme* prepend, bool* metaspace_split,
                           std::vector<SplitStep>* splits) {
  std::vector<const json*> items;
  if (type_of(p) == "Sequence") {
    const json* list = member(p, "pretokenizers");
    if (list == nullptr || !list->is_array()) return Status::error("pre_tokenizer Sequence has no pretokenizers list");
    for (const json& item : *list) items.push_back(&item);
  } else {
    items.push_back(&p);
  }
  for (const json* item : items) {
    const std::string type = type_of(*item);
    if (type == "Split") {
      const json* pattern = member(*item, "pattern");
      const json* regex = pattern != nullptr ? member(*pattern, "Regex") : nullptr;
      const json* literal = pattern != nullptr ? member(*pattern, "String") : nullptr;
      const json* text = regex != nullptr ? regex : literal;
      if (text == nullptr || !text->is_string()) return Status::error("Split pre-tokenizer has no Regex or String pattern");
      const json* behavior = member(*item, "behavior");
      const std::string b = behavior != nullptr && behavior->is_string() ? behavior->get<std::string>() : "";
      if (b != "Isolated" && b != "Removed") {
        return Status::error("unsupported Split behavior " + shown(b) + " (Isolated and Removed are)");
      }
      if (bool_or(*item, "invert", false)) return Status::error("unsupported Split with invert=true");
      auto regex_or = SplitRegex::compile(text->get<std::string>(), regex == nullptr);
      if (!regex_or) return regex_or.status();
      splits->push_back({std::move(*regex_or), b == "Isolated"});
    } else if (type == "ByteLevel") {
      if (bool_or(*item, "add_prefix_space", false)) {
        return Status::error("unsupported ByteLevel pre-tokenizer with add_prefix_space=true");
      }
      *byte_level = true;
      if (bool_or(*item, "use_regex", true)) {
        auto regex_or = SplitRegex::compile(kGpt2Pattern, false);
        LLMQ_CHECK(regex_or.has_value(), "the built-in GPT-2 pattern must compile");
        splits->push_back({std::move(*regex_or), true});
      }
    } else if (type == "Metaspace") {
      const json* r = member(*item, "replacement");
      if (r != nullptr && (!r->is_string() || r->get<std::string>() != kMetaspace)) {
        return Status::error("unsupported Metaspace replacement other than \"\xE2\x96\x81\"");
      }
      if (!splits->empty()) return Status::error("unsupported pre-tokenizer order: Metaspace after Split");
      *metaspace = true;
      *metaspace_split = bool_or(*item, "split", true);
      const json* scheme = member(*item, "prepend_scheme");
      if (scheme != nullptr && scheme->is_string()) {
        const std::string s = scheme->get<std::string>();
        if (s == "always") {
          *prepend = PrependScheme::kAlways;
        } else if (s == "first") {
          *prepend = PrependScheme::kFirst;
        } else if (s == "never") {
          *prepend = PrependScheme::kNever;
        } else {
          return Status::error("unsupported Metaspace prepend_scheme " + shown(s));
        }
      } else {
        *prepend = bool_or(*item, "add_prefix_space", true) ? PrependScheme::kAlways : PrependScheme::kNever;
      }
    } else {
      return Status::error("unsupported pre_tokenizer " + shown(type.empty() ? "(no type)" : type));
    }
  }
  if (*byte_level && *metaspace) return Status::error("unsupported pre-tokenizer: both ByteLevel and Metaspace");
  return Status::ok();
}

// A merge as ["a", "b"] (tokenizers >= 0.20) or "a b" (older files).
Status parse_merge(const json& m, size_t index, std::string* a, std::string* b) {
  if (m.is_string()) {
    const std::string s = m.get<std::string>();
    const size_t space = s.find(' ');
    if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
      return Status::error("merge " + std::to_string(index) + " " + shown(s) + " is not two tokens separated by one space");
    }
    *a = s.substr(0, space);
    *b = s.substr(space + 1);
    return Status::ok();
  }
  if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
    *a = m[0].get<std::string>();
    *b = m[1].get<std::string>();
    return Status::ok();
  }
  return Status::error("merge " + std::to_string(index) + " is neither \"a b\" nor [\"a\", \"b\"]");
}

Expected<std::unique_ptr<VocabTokenizer>> parse_bpe(const json& doc, const std::string& origin) {
  const auto fail = [&](const std::string& problem) { return Status::error(origin + ": " + problem); };
  if (!doc.is_object()) return fail("not a tokenizer.json object");
  const json* model = member(doc, "model");
  if (model == nullptr || !model->is_object()) return fail("no \"model\" object");
  const std::string model_type = type_of(*model);
  if (!model_type.empty() && model_type != "BPE") {
    return fail("unsupported model type " + shown(model_type) + " (only BPE is supported)");
  }
  if (model_type.empty() && member(*model, "merges") == nullptr) {
    return fail("model has no \"type\" and no merges; only BPE is supported");
  }
  const json* vocab = member(*model, "vocab");
  if (vocab == nullptr || !vocab->is_object()) return fail("model has no \"vocab\" object");
  if (const json* d = member(*model, "dropout"); d != nullptr && !(d->is_number() && d->get<double>() == 0.0)) {
    return fail("unsupported BPE dropout");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json* v = member(*model, key);
    if (v != nullptr && !(v->is_string() && v->get<std::string>().empty())) {
      return fail(std::string("unsupported BPE ") + key);
    }
  }

  auto tok = std::make_unique<BpeTokenizer>();
  BpeTokenizer& t = *tok;

  // Pipeline first: byte-level decides how the vocab is keyed.
  if (const json* n = member(doc, "normalizer")) {
    if (Status s = parse_normalizer(*n, &t.metaspace_, &t.prepend_); !s) return fail(s.message());
  }
  if (const json* p = member(doc, "pre_tokenizer")) {
    Status s = parse_pre_tokenizer(*p, &t.byte_level_, &t.metaspace_, &t.prepend_,
                                   &t.metaspace_split_, &t.splits_);
    if (!s) return fail(s.message());
  }
  t.byte_fallback_ = bool_or(*model, "byte_fallback", false);
  t.ignore_merges_ = bool_or(*model, "ignore_merges", false);
  t.fuse_unk_ = bool_or(*model, "fuse_unk", false);

  // Vocab. Byte-level: keyed by raw bytes; a token outside the byte alphabet cannot come out
  // of byte-level BPE, so it is kept aside (decodable as written, findable by name).
  int64_t max_id = -1;
  std::vector<std::pair<int32_t, std::string>> id_and_text;  // [n_vocab] for id_text_
  id_and_text.reserve(vocab->size());
  t.vocab_.reserve(vocab->size() * 2);
  for (const auto& [token, id_json] : vocab->items()) {
    if (!id_json.is_number_integer()) return fail("vocab entry " + shown(token) + " has no integer id");
    const int64_t id = id_json.get<int64_t>();
    if (id < 0 || id > kMaxTokenId) {
      return fail("vocab entry " + shown(token) + " has id " + std::to_string(id) + " outside [0, " +
                  std::to_string(kMaxTokenId) + "]");
    }
    max_id = std::max(max_id, id);
    if (!t.byte_level_) {
      id_and_text.emplace_back(static_cast<int32_t>(id), token);
      t.vocab_.emplace(token, static_cast<int32_t>(id));
    } else if (std::optional<std::string> bytes = byte_level_to_bytes(token)) {
      id_and_text.emplace_back(static_cast<int32_t>(id), *bytes);
      t.vocab_.emplace(std::move(*bytes), static_cast<int32_t>(id));
    } else {
      id_and_text.emplace_back(static_cast<int32_t>(id), token);
      t.unmapped_vocab_.emplace(token, static_cast<int32_t>(id));
    }
  }

  // Added tokens.
  struct Added {
    std::string content;
    int32_t id;
    bool special;
  };
  std::vector<Added> added;
  if (const json* list = member(doc, "added_tokens")) {
    if (!list->is_array()) return fail("\"added_tokens\" is not a list");
    for (size_t i = 0; i < list->size(); ++i) {
      const json& a = (*list)[i];
      const json* id = member(a, "id");
      const json* content = member(a, "content");
      if (id == nullptr || !id->is_number_integer() || content == nullptr || !content->is_string()) {
        return fail("added_tokens[" + std::to_string(i) + "] needs an integer id and a string content");
      }
      const int64_t value = id->get<int64_t>();
      if (value < 0 || value > kMaxTokenId) {
        return fail("added_tokens[" + std::to_string(i) + "] has id " + std::to_string(value) + " out of range");
      }
      if (content->get<std::string>().empty()) return fail("added_tokens[" + std::to_string(i) + "] is empty");
      max_id = std::max(max_id, value);
      added.push_back({content->get<std::string>(), static_cast<int32_t>(value), bool_or(a, "special", false)});
    }
  }

  // Decode table: vocab text, overridden by added-token content (HF looks added tokens up first).
  t.id_text_.assign(static_cast<size_t>(max_id + 1), std::string());
  for (auto& [id, text] : id_and_text) t.id_text_[id] = std::move(text);
  for (const Added& a : added) {
    t.id_text_[a.id] = a.content;
    t.added_ids_[a.content] = a.id;
    t.all_added_.add(a.content, a.id);
    if (!a.special) t.nonspecial_added_.add(a.content, a.id);
  }
  t.id_is_byte_.assign(t.id_text_.size(), 0);
  t.fallback_ids_.fill(-1);
  t.byte_ids_.fill(-1);
  for (const auto& [text, id] : t.vocab_) {
    if (const std::optional<uint8_t> b = parse_byte_token(text)) {
      t.fallback_ids_[*b] = id;
      t.id_is_byte_[id] = static_cast<uint8_t>(*b + 1);  // 0 means "not a byte token"
    }
    if (t.byte_level_ && text.size() == 1) t.byte_ids_[static_cast<uint8_t>(text[0])] = id;
  }
  if (t.byte_level_) t.id_is_byte_.assign(t.id_text_.size(), 0);

  // unk: transformers' LlamaTokenizer builds the sentencepiece-style BPE without it.
  if (const json* unk = member(*model, "unk_token"); unk != nullptr && !t.metaspace_) {
    if (!unk->is_string()) return fail("model unk_token is not a string");
    const auto it = t.vocab_.find(unk->get<std::string>());
    if (it == t.vocab_.end()) return fail("unk_token " + shown(unk->get<std::string>()) + " is not in the vocab");
    t.unk_id_ = it->second;
  }

  // Merges: rank = position in the list; both parts and their concatenation must be tokens.
  if (const json* merges = member(*model, "merges")) {
    if (!merges->is_array()) return fail("model \"merges\" is not a list");
    t.merges_.reserve(merges->size() * 2);
    std::string a, b;
    for (size_t i = 0; i < merges->size(); ++i) {
      if (Status s = parse_merge((*merges)[i], i, &a, &b); !s) return fail(s.message());
      std::string ka = a, kb = b;
      if (t.byte_level_) {
        std::optional<std::string> ba = byte_level_to_bytes(a), bb = byte_level_to_bytes(b);
        if (!ba || !bb) {
          // Outside the byte alphabet: never applicable, but still has to name real tokens.
          if ((!ba && t.unmapped_vocab_.count(a) == 0) || (!bb && t.unmapped_vocab_.count(b) == 0)) {
            return fail("merge " + std::to_string(i) + " (" + shown(a) + ", " + shown(b) +
                        ") names a token that is not in the vocab");
          }
          continue;
        }
        ka = std::move(*ba);
        kb = std::move(*bb);
      }
      const auto ia = t.vocab_.find(ka);
      const auto ib = t.vocab_.find(kb);
      const auto im = t.vocab_.find(ka + kb);
      if (ia == t.vocab_.end() || ib == t.vocab_.end() || im == t.vocab_.end()) {
        const std::string missing = ia == t.vocab_.end() ? a : ib == t.vocab_.end() ? b : a + b;
        return fail("merge " + std::to_string(i) + " (" + shown(a) + ", " + shown(b) + ") names " +
                    shown(missing) + ", which is not in the vocab");
      }
      // A repeated pair keeps its first (lowest) rank, as HF does.
      t.merges_.emplace(pair_key(ia->second, ib->second), MergeRule{static_cast<int32_t>(i), im->second});
    }
  }

  // BOS from the post-processor template (Llama-3 style files add <|begin_of_text|> there).
  std::optional<int32_t> bos;
  bool add_bos = true;
  const json* post = member(doc, "post_processor");
  std::vector<const json*> processors;
  if (post != nullptr && type_of(*post) == "Sequence") {
    if (const json* list = member(*post, "processors"); list != nullptr && list->is_array()) {
      for (const json& p : *list) processors.push_back(&p);
    }
  } else if (post != nullptr) {
    processors.push_back(post);
  }
  for (const json* p : processors) {
    if (type_of(*p) != "TemplateProcessing") continue;
    const json* single = member(*p, "single");
    if (single == nullptr || !single->is_array() || single->empty()) continue;
    const json* special = member((*single)[0], "SpecialToken");
    add_bos = special != nullptr;
    const json* name = special != nullptr ? member(*special, "id") : nullptr;
    if (name != nullptr && name->is_string()) {
      bos = t.token_to_id(name->get<std::string>());
      if (!bos) return fail("post_processor names " + shown(name->get<std::string>()) + ", which is not a token");
    }
  }
  t.file_adds_bos_ = add_bos;
  t.set_special_ids(bos, {}, add_bos);
  return std::unique_ptr<VocabTokenizer>(std::move(tok));
}

}  // namespace

Expected<std::unique_ptr<VocabTokenizer>> make_bpe_tokenizer(const std::string& json_text,
                                                             const std::string& origin) {
  json doc;
  try {
    doc = json::parse(json_text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a huge number
    return Status::error(origin + ": not valid JSON (" + e.what() + ")");
  }
  try {
    return parse_bpe(doc, origin);
  } catch (const json::exception& e) {
    // The checks above should leave nothing for nlohmann to reject; this keeps a missed one
    // an error message rather than a crash.
    return Status::error(origin + ": unexpected JSON structure (" + e.what() + ")");
  }
}

Expected<std::unique_ptr<Tokenizer>> load_tokenizer_json_text(const std::string& json_text,
                                                             const std::string& origin) {
  LLMQ_ASSIGN_OR_RETURN(std::unique_ptr<VocabTokenizer> tok, make_bpe_tokenizer(json_text, origin));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace llmq
