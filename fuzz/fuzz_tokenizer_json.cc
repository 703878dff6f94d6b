// libFuzzer target: tokenizer.json bytes -> load_tokenizer_json_text; when a tokenizer loads,
// it encodes (ordinary and with specials) a short fixed text plus the input's first bytes, and
// decodes the result. Bad files must come back as a Status, never crash or hang.
#include <cstddef>
#include <cstdint>
#include <string>

#include "formats/tokenizer_impl.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string json(reinterpret_cast<const char*>(data), size);
  auto tok = llmq::load_tokenizer_json_text(json, "fuzz.json");
  if (!tok.has_value()) return 0;
  // Spaces, "▁", digits, a non-ASCII letter, an invalid UTF-8 byte and the input's own prefix
  // (which may contain its added tokens).
  const std::string text = std::string("Hi  there \xE2\x96\x81x 12345 caf\xC3\xA9 \xFF!\n") +
                           json.substr(0, 64);
  const std::vector<int32_t> ordinary = (*tok)->encode_ordinary(text);
  const std::vector<int32_t> specials = (*tok)->encode_with_specials(text);
  (*tok)->decode(ordinary);
  (*tok)->decode(specials);
  (*tok)->encode(text);
  return 0;
}
