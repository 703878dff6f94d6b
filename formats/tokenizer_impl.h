// Internal interface between the tokenizer implementations (tokenizer_bpe.cc,
// tokenizer_sentencepiece.cc) and the checkpoint-directory loader (tokenizer.cc). Code outside
// formats/ uses formats/tokenizer.h; tests and the fuzzer may use load_tokenizer_json_text.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "core/status.h"
#include "formats/tokenizer.h"

namespace llmq {

// A tokenizer that can name its tokens: load_tokenizer() resolves the bos_token / eos_token
// strings of tokenizer_config.json through token_to_id().
class VocabTokenizer : public Tokenizer {
 public:
  // The id of a token given as written in the tokenizer files (added tokens first); nullopt
  // when the tokenizer has no such token.
  virtual std::optional<int32_t> token_to_id(const std::string& token) const = 0;
  // Whether the tokenizer file itself asks for BOS (tokenizer.json's TemplateProcessing);
  // true when it does not say. tokenizer_config.json's add_bos_token overrides it.
  bool file_adds_bos() const { return file_adds_bos_; }

 protected:
  bool file_adds_bos_ = true;
};

// HF tokenizer.json text; `origin` names it in error messages ("ORIGIN: problem").
// BOS/EOS defaults come from the file's TemplateProcessing post-processor when it has one.
Expected<std::unique_ptr<VocabTokenizer>> make_bpe_tokenizer(const std::string& json_text,
                                                             const std::string& origin);
// SentencePiece model file; BOS/EOS defaults from the model.
Expected<std::unique_ptr<VocabTokenizer>> make_sentencepiece_tokenizer(const std::string& path);

// load_tokenizer_json() on bytes already in memory (fuzzer, tests).
Expected<std::unique_ptr<Tokenizer>> load_tokenizer_json_text(const std::string& json_text,
                                                             const std::string& origin);

}  // namespace llmq
