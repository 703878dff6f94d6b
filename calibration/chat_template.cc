// Llama-3 chat template; see chat_template.h.
#include "calibration/chat_template.h"

namespace llmq {

std::string_view strip_whitespace(std::string_view s) {
  constexpr std::string_view kSpace = " \t\n\r\v\f";
  const size_t b = s.find_first_not_of(kSpace);
  if (b == std::string_view::npos) return {};
  const size_t e = s.find_last_not_of(kSpace);
  return s.substr(b, e - b + 1);
}

std::string render_llama3_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  std::string out = "<|begin_of_text|>";
  for (const ChatMessage& m : messages) {
    out += "<|start_header_id|>";
    out += m.role;
    out += "<|end_header_id|>\n\n";
    out += strip_whitespace(m.content);
    out += "<|eot_id|>";
  }
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

const std::vector<std::string>& llama3_chat_special_tokens() {
  static const std::vector<std::string> kTokens = {"<|begin_of_text|>", "<|start_header_id|>",
                                                   "<|end_header_id|>", "<|eot_id|>"};
  return kTokens;
}

Status check_llama3_chat_tokens(const Tokenizer& tokenizer, const std::string& tokenizer_name) {
  for (const std::string& t : llama3_chat_special_tokens()) {
    // A tokenizer that knows the token as a special maps it to exactly one id; otherwise the
    // text falls apart into ordinary pieces ("<", "|", ...).
    if (tokenizer.encode_with_specials(t).size() != 1)
      return Status::error(tokenizer_name + ": tokenizer has no special token " + t +
                           " (the --chat dataset needs a Llama-3 chat tokenizer)");
  }
  return Status::ok();
}

}  // namespace llmq
