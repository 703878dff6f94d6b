// The checkpoint-directory tokenizer loader: picks tokenizer.json (HF, preferred, as
// transformers does) or tokenizer.model (SentencePiece), then settles BOS/EOS and whether BOS
// is added, from, in order of precedence:
//   tokenizer_config.json  add_bos_token; bos_token / eos_token (a string or {"content": ...})
//   config.json            bos_token_id / eos_token_id (an int or a list)
//   the tokenizer file     SentencePiece model ids, or tokenizer.json's TemplateProcessing
// EOS ids are the union of tokenizer_config's eos_token and config.json's list (instruct
// checkpoints stop on several), tokenizer_config's first.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "formats/tokenizer.h"
#include "formats/tokenizer_impl.h"

namespace llmq {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

Expected<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::error(path + ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return Status::error(path + ": read failed");
  return text.str();
}

// An optional JSON file: null when absent; an error when present but unreadable or not JSON.
Expected<json> read_optional_json(const std::string& path) {
  if (!fs::exists(path)) return json();
  LLMQ_ASSIGN_OR_RETURN(std::string text, read_file(path));
  try {
    json doc = json::parse(text);
    if (!doc.is_object()) return Status::error(path + ": not a JSON object");
    return doc;
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a huge number
    return Status::error(path + ": not valid JSON (" + e.what() + ")");
  }
}

// tokenizer_config.json's bos_token / eos_token: "<s>" or {"content": "<s>", ...}; null or
// absent gives nullopt.
Expected<std::optional<std::string>> token_name(const json& config, const char* key,
                                                const std::string& path) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::optional<std::string>();
  if (it->is_string()) return std::optional<std::string>(it->get<std::string>());
  if (it->is_object()) {
    const auto content = it->find("content");
    if (content != it->end() && content->is_string()) {
      return std::optional<std::string>(content->get<std::string>());
    }
  }
  return Status::error(path + ": " + key + " is neither a string nor an object with \"content\"");
}

// config.json's bos_token_id / eos_token_id: an int or a list of ints; absent or null: empty.
Expected<std::vector<int32_t>> token_ids(const json& config, const char* key,
                                         const std::string& path, int64_t vocab_size) {
  std::vector<int32_t> ids;
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return ids;
  std::vector<json> items;
  if (it->is_array()) {
    items.assign(it->begin(), it->end());
  } else {
    items.push_back(*it);
  }
  for (const json& item : items) {
    if (!item.is_number_integer()) return Status::error(path + ": " + key + " is not an integer or a list of integers");
    const int64_t id = item.get<int64_t>();
    if (id < 0 || id >= vocab_size) {
      return Status::error(path + ": " + key + " " + std::to_string(id) + " is outside the tokenizer's " +
                           std::to_string(vocab_size) + " ids");
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

Expected<std::optional<int32_t>> resolve_token(const VocabTokenizer& tok, const json& config,
                                               const char* key, const std::string& path) {
  LLMQ_ASSIGN_OR_RETURN(std::optional<std::string> name, token_name(config, key, path));
  if (!name) return std::optional<int32_t>();
  const std::optional<int32_t> id = tok.token_to_id(*name);
  if (!id) return Status::error(path + ": " + key + " \"" + *name + "\" is not a token of the tokenizer");
  return id;
}

}  // namespace

std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int32_t> ids = encode_ordinary(text);
  if (adds_bos()) ids.insert(ids.begin(), *bos_id());
  return ids;
}

Expected<std::unique_ptr<Tokenizer>> load_tokenizer_json(const std::string& path) {
  LLMQ_ASSIGN_OR_RETURN(std::string text, read_file(path));
  return load_tokenizer_json_text(text, path);
}

Expected<std::unique_ptr<Tokenizer>> load_tokenizer(const std::string& dir) {
  const std::string json_path = (fs::path(dir) / "tokenizer.json").string();
  const std::string model_path = (fs::path(dir) / "tokenizer.model").string();
  std::unique_ptr<VocabTokenizer> tok;
  if (fs::exists(json_path)) {
    LLMQ_ASSIGN_OR_RETURN(std::string text, read_file(json_path));
    LLMQ_ASSIGN_OR_RETURN(tok, make_bpe_tokenizer(text, json_path));
  } else if (fs::exists(model_path)) {
    LLMQ_ASSIGN_OR_RETURN(tok, make_sentencepiece_tokenizer(model_path));
  } else {
    return Status::error(dir + ": no tokenizer.json or tokenizer.model");
  }

  const std::string tc_path = (fs::path(dir) / "tokenizer_config.json").string();
  const std::string config_path = (fs::path(dir) / "config.json").string();
  LLMQ_ASSIGN_OR_RETURN(json tc, read_optional_json(tc_path));
  LLMQ_ASSIGN_OR_RETURN(json config, read_optional_json(config_path));
  if (tc.is_null()) tc = json::object();
  if (config.is_null()) config = json::object();

  std::optional<int32_t> bos = tok->bos_id();
  std::vector<int32_t> eos;
  bool add_bos = tok->file_adds_bos();

  LLMQ_ASSIGN_OR_RETURN(std::optional<int32_t> tc_bos, resolve_token(*tok, tc, "bos_token", tc_path));
  LLMQ_ASSIGN_OR_RETURN(std::optional<int32_t> tc_eos, resolve_token(*tok, tc, "eos_token", tc_path));
  LLMQ_ASSIGN_OR_RETURN(std::vector<int32_t> cfg_bos,
                        token_ids(config, "bos_token_id", config_path, tok->vocab_size()));
  LLMQ_ASSIGN_OR_RETURN(std::vector<int32_t> cfg_eos,
                        token_ids(config, "eos_token_id", config_path, tok->vocab_size()));
  if (tc_bos) {
    bos = tc_bos;
  } else if (!cfg_bos.empty()) {
    bos = cfg_bos.front();
  }
  if (tc_eos) eos.push_back(*tc_eos);
  for (int32_t id : cfg_eos) {
    if (std::find(eos.begin(), eos.end(), id) == eos.end()) eos.push_back(id);
  }
  if (eos.empty()) eos = tok->eos_ids();
  if (const auto it = tc.find("add_bos_token"); it != tc.end() && !it->is_null()) {
    if (!it->is_boolean()) return Status::error(tc_path + ": add_bos_token is not true or false");
    add_bos = it->get<bool>();
  }
  tok->set_special_ids(bos, std::move(eos), add_bos);
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace llmq
