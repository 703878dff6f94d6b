// The Llama-3 chat template, as the Meta-Llama-3(.1)-Instruct tokenizer_config.json
// `chat_template` renders it (without the system-prompt date lines of 3.1):
//   <|begin_of_text|>
//   for each message: <|start_header_id|>{role}<|end_header_id|>\n\n{content | trim}<|eot_id|>
//   [add_generation_prompt: <|start_header_id|>assistant<|end_header_id|>\n\n]
// The rendered text is encoded with Tokenizer::encode_with_specials and no extra BOS: the
// template already starts with <|begin_of_text|>.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "formats/tokenizer.h"

namespace llmq {

struct ChatMessage {
  std::string role;
  std::string content;
};

// Python's str.strip() on ASCII whitespace (Jinja's `trim`).
std::string_view strip_whitespace(std::string_view s);

std::string render_llama3_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt);

// The four special tokens the template uses, in the order checked.
const std::vector<std::string>& llama3_chat_special_tokens();

// OK when the tokenizer maps every template special token to one id (a Llama-3 tokenizer
// with its added_tokens); else an error naming `tokenizer_name` and the missing token.
Status check_llama3_chat_tokens(const Tokenizer& tokenizer, const std::string& tokenizer_name);

}  // namespace llmq
