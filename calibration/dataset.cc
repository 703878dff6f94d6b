// Calibration datasets; see dataset.h.
#include "calibration/dataset.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>

#include "calibration/chat_template.h"

namespace llmq {
namespace {

// Uniform in [0, n) by rejection: std::uniform_int_distribution's algorithm differs between
// standard libraries, this does not.
uint64_t bounded_draw(std::mt19937_64& rng, uint64_t n) {
  const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % n;
  uint64_t x;
  do {
    x = rng();
  } while (x >= limit);
  return x % n;
}

std::string line_prefix(const std::string& path, int64_t line) {
  return path + ": line " + std::to_string(line);
}

// nlohmann messages start with "[json.exception.parse_error.101] "; the bracket adds nothing.
std::string json_error_text(const std::exception& e) {
  std::string s = e.what();
  if (!s.empty() && s[0] == '[') {
    const size_t close = s.find("] ");
    if (close != std::string::npos) s = s.substr(close + 2);
  }
  return s;
}

struct JsonLine {
  int64_t line = 0;  // 1-based
  nlohmann::json value;
};

// Every non-blank line parsed as a JSON object.
Expected<std::vector<JsonLine>> parse_jsonl(const std::string& path, const std::string& bytes) {
  std::vector<JsonLine> out;
  size_t pos = 0;
  int64_t line_no = 0;
  while (pos < bytes.size()) {
    size_t end = bytes.find('\n', pos);
    if (end == std::string::npos) end = bytes.size();
    std::string_view line(bytes.data() + pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (strip_whitespace(line).empty()) continue;
    JsonLine jl;
    jl.line = line_no;
    try {
      jl.value = nlohmann::json::parse(line.begin(), line.end());
    } catch (const nlohmann::json::exception& e) {
      return Status::error(line_prefix(path, line_no) + ": invalid JSON (" + json_error_text(e) + ")");
    }
    if (!jl.value.is_object()) return Status::error(line_prefix(path, line_no) + ": expected a JSON object");
    out.push_back(std::move(jl));
  }
  return out;
}

void truncate_to(std::vector<int32_t>& ids, int64_t seq_len) {
  if (static_cast<int64_t>(ids.size()) > seq_len) ids.resize(static_cast<size_t>(seq_len));
}

std::string fewer_warning(const std::string& path, int64_t available, int64_t wanted, const char* what) {
  return path + ": only " + std::to_string(available) + " " + what + " available, " +
         std::to_string(wanted) + " requested; using all of them";
}

Expected<CalibrationSamples> jsonl_samples(const DatasetSpec& spec, const std::string& bytes,
                                           const Tokenizer& tokenizer, int64_t samples, int64_t seq_len,
                                           uint64_t seed) {
  LLMQ_ASSIGN_OR_RETURN(std::vector<JsonLine> lines, parse_jsonl(spec.path, bytes));
  std::vector<const std::string*> texts;  // usable lines, in file order
  for (const JsonLine& jl : lines) {
    const auto it = jl.value.find(spec.field);
    if (it == jl.value.end() || !it->is_string())
      return Status::error(line_prefix(spec.path, jl.line) + ": no string field \"" + spec.field + "\"");
    const std::string& text = it->get_ref<const std::string&>();
    if (strip_whitespace(text).empty()) continue;
    texts.push_back(&text);
  }
  if (texts.empty()) return Status::error(spec.path + ": no non-empty \"" + spec.field + "\" samples");
  CalibrationSamples out;
  out.available = static_cast<int64_t>(texts.size());
  if (out.available < samples) out.warning = fewer_warning(spec.path, out.available, samples, "non-empty lines");
  for (int64_t i : choose_indices(out.available, samples, seed)) {
    std::vector<int32_t> ids = tokenizer.encode(*texts[static_cast<size_t>(i)]);
    truncate_to(ids, seq_len);
    out.samples.push_back(std::move(ids));
  }
  return out;
}

Expected<CalibrationSamples> chat_samples(const DatasetSpec& spec, const std::string& bytes,
                                          const Tokenizer& tokenizer, const std::string& tokenizer_name,
                                          int64_t samples, int64_t seq_len, uint64_t seed) {
  LLMQ_RETURN_IF_ERROR(check_llama3_chat_tokens(tokenizer, tokenizer_name));
  LLMQ_ASSIGN_OR_RETURN(std::vector<JsonLine> lines, parse_jsonl(spec.path, bytes));
  std::vector<std::vector<ChatMessage>> chats;  // in file order
  for (const JsonLine& jl : lines) {
    const std::string where = line_prefix(spec.path, jl.line);
    const auto it = jl.value.find("messages");
    if (it == jl.value.end() || !it->is_array()) return Status::error(where + ": no array field \"messages\"");
    std::vector<ChatMessage> chat;
    for (size_t m = 0; m < it->size(); ++m) {
      const nlohmann::json& msg = (*it)[m];
      const std::string at = where + ": messages[" + std::to_string(m) + "]";
      if (!msg.is_object()) return Status::error(at + " is not an object");
      for (const char* key : {"role", "content"}) {
        const auto f = msg.find(key);
        if (f == msg.end() || !f->is_string())
          return Status::error(at + " has no string \"" + key + "\"");
      }
      chat.push_back({msg["role"].get<std::string>(), msg["content"].get<std::string>()});
    }
    if (chat.empty()) continue;
    chats.push_back(std::move(chat));
  }
  if (chats.empty()) return Status::error(spec.path + ": no non-empty \"messages\" samples");
  CalibrationSamples out;
  out.available = static_cast<int64_t>(chats.size());
  if (out.available < samples) out.warning = fewer_warning(spec.path, out.available, samples, "conversations");
  for (int64_t i : choose_indices(out.available, samples, seed)) {
    std::vector<int32_t> ids =
        tokenizer.encode_with_specials(render_llama3_chat(chats[static_cast<size_t>(i)], false));
    truncate_to(ids, seq_len);
    out.samples.push_back(std::move(ids));
  }
  return out;
}

}  // namespace

std::string_view dataset_kind_name(DatasetKind kind) {
  switch (kind) {
    case DatasetKind::kText: return "text";
    case DatasetKind::kJsonl: return "jsonl";
    case DatasetKind::kChat: return "chat";
  }
  return "?";
}

int64_t CalibrationSamples::tokens() const {
  int64_t n = 0;
  for (const auto& s : samples) n += static_cast<int64_t>(s.size());
  return n;
}

std::vector<int64_t> choose_indices(int64_t available, int64_t wanted, uint64_t seed) {
  std::vector<int64_t> idx(static_cast<size_t>(std::max<int64_t>(available, 0)));
  std::iota(idx.begin(), idx.end(), int64_t{0});
  if (wanted >= available) return idx;
  // Partial Fisher-Yates: the first `wanted` entries become a uniform random subset.
  std::mt19937_64 rng(seed);
  for (int64_t i = 0; i < wanted; ++i) {
    const int64_t j = i + static_cast<int64_t>(bounded_draw(rng, static_cast<uint64_t>(available - i)));
    std::swap(idx[static_cast<size_t>(i)], idx[static_cast<size_t>(j)]);
  }
  idx.resize(static_cast<size_t>(std::max<int64_t>(wanted, 0)));
  std::sort(idx.begin(), idx.end());
  return idx;
}

Expected<CalibrationSamples> text_samples(const std::vector<int32_t>& ids, std::optional<int32_t> bos,
                                          int64_t samples, int64_t seq_len, uint64_t seed,
                                          const std::string& origin) {
  const int64_t window = seq_len - (bos ? 1 : 0);
  if (window < 1) return Status::error(origin + ": seq-len " + std::to_string(seq_len) + " leaves no room for text");
  const int64_t n_windows = static_cast<int64_t>(ids.size()) / window;  // the ragged tail is dropped
  if (n_windows == 0)
    return Status::error(origin + ": " + std::to_string(ids.size()) + " tokens do not fill one window of " +
                         std::to_string(window));
  CalibrationSamples out;
  out.available = n_windows;
  if (n_windows < samples) out.warning = fewer_warning(origin, n_windows, samples, "windows");
  for (int64_t w : choose_indices(n_windows, samples, seed)) {
    std::vector<int32_t> s;
    s.reserve(static_cast<size_t>(seq_len));
    if (bos) s.push_back(*bos);
    s.insert(s.end(), ids.begin() + w * window, ids.begin() + (w + 1) * window);
    out.samples.push_back(std::move(s));
  }
  return out;
}

Expected<std::string> read_file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::error(path + ": cannot open (missing or unreadable)");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return Status::error(path + ": read failed");
  return ss.str();
}

Expected<CalibrationSamples> load_dataset(const DatasetSpec& spec, const Tokenizer& tokenizer,
                                          const std::string& tokenizer_name, int64_t samples,
                                          int64_t seq_len, uint64_t seed) {
  if (samples < 1) return Status::error("calibrate: --samples must be at least 1");
  if (seq_len < 2) return Status::error("calibrate: --seq-len must be at least 2");
  LLMQ_ASSIGN_OR_RETURN(std::string bytes, read_file_bytes(spec.path));
  switch (spec.kind) {
    case DatasetKind::kText: {
      if (strip_whitespace(bytes).empty()) return Status::error(spec.path + ": empty dataset");
      const std::vector<int32_t> ids = tokenizer.encode_ordinary(bytes);
      const std::optional<int32_t> bos = tokenizer.adds_bos() ? tokenizer.bos_id() : std::nullopt;
      return text_samples(ids, bos, samples, seq_len, seed, spec.path);
    }
    case DatasetKind::kJsonl:
      if (spec.field.empty()) return Status::error("calibrate: --jsonl needs a field name");
      return jsonl_samples(spec, bytes, tokenizer, samples, seq_len, seed);
    case DatasetKind::kChat:
      return chat_samples(spec, bytes, tokenizer, tokenizer_name, samples, seq_len, seed);
  }
  return Status::error("calibrate: unknown dataset kind");
}

}  // namespace llmq
