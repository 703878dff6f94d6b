// Tokenizers of Llama checkpoints, behind one interface:
//   - SentencePiece `tokenizer.model` (Llama-2), through libsentencepiece;
//   - HF `tokenizer.json` BPE, in the two flavours Llama checkpoints use:
//       byte-level (GPT-2 byte alphabet, Llama-3 split regex via PCRE2, ignore_merges), and
//       sentencepiece-style (normalizer prepend "▁" + replace " " -> "▁", byte_fallback
//       <0xNN> tokens, fuse_unk) as in the two tiny models;
//   - added/special tokens from tokenizer.json `added_tokens`, BOS/EOS from
//     tokenizer_config.json (add_bos_token, bos_token, eos_token) and config.json.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace llmq {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Ordinary text: special-token text is NOT special, no BOS/EOS.
  virtual std::vector<int32_t> encode_ordinary(const std::string& text) const = 0;
  // Recognises the special / added tokens in the text (for chat templates), no BOS added.
  virtual std::vector<int32_t> encode_with_specials(const std::string& text) const = 0;
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;

  // encode_ordinary with BOS prepended when the checkpoint's tokenizer adds it.
  std::vector<int32_t> encode(const std::string& text) const;
  std::optional<int32_t> bos_id() const { return bos_id_; }
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  bool adds_bos() const { return add_bos_ && bos_id_.has_value(); }
  void set_special_ids(std::optional<int32_t> bos, std::vector<int32_t> eos, bool add_bos) {
    bos_id_ = bos;
    eos_ids_ = std::move(eos);
    add_bos_ = add_bos;
  }

 private:
  std::optional<int32_t> bos_id_;
  std::vector<int32_t> eos_ids_;
  bool add_bos_ = true;
};

// Loads the tokenizer of a checkpoint directory: tokenizer.json if present, else
// tokenizer.model; BOS/EOS and add_bos from tokenizer_config.json / config.json.
Expected<std::unique_ptr<Tokenizer>> load_tokenizer(const std::string& dir);
// Single files (tests, tools).
Expected<std::unique_ptr<Tokenizer>> load_tokenizer_json(const std::string& path);
Expected<std::unique_ptr<Tokenizer>> load_sentencepiece_model(const std::string& path);

}  // namespace llmq
