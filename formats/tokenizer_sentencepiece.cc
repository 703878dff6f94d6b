// SentencePiece `tokenizer.model` (Llama-2) through libsentencepiece: encoding and decoding
// are the library's own, so ids match the reference sentencepiece exactly. What this file adds:
// loading with a one-line error naming the file, BOS/EOS from the model, and recognition of
// the control pieces (<s>, </s>) and <unk> written in the text for encode_with_specials, which
// sentencepiece itself never does.
#include <algorithm>
#include <fstream>
#include <sstream>
#include <string_view>
#include <utility>
#include <vector>

#include <sentencepiece_processor.h>

#include "core/check.h"
#include "formats/tokenizer_impl.h"

namespace llmq {
namespace {

class SentencePieceTokenizer final : public VocabTokenizer {
 public:
  // Loads a serialized ModelProto; error: sentencepiece's message, without the file name.
  Status load(const std::string& bytes) {
    const auto status = sp_.LoadFromSerializedProto(bytes);
    if (!status.ok()) {
      std::string message = status.ToString();
      std::replace(message.begin(), message.end(), '\n', ' ');  // one-line messages
      return Status::error(message);
    }
    const int n = sp_.GetPieceSize();
    if (n <= 0) return Status::error("the model has no pieces");
    for (int id = 0; id < n; ++id) {
      if (sp_.IsControl(id) || sp_.IsUnknown(id)) {
        const std::string& piece = sp_.IdToPiece(id);
        if (!piece.empty()) specials_.emplace_back(piece, id);
      }
    }
    // Longest first, so a piece that prefixes another never shadows it.
    std::stable_sort(specials_.begin(), specials_.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
    std::optional<int32_t> bos;
    std::vector<int32_t> eos;
    if (sp_.bos_id() >= 0) bos = sp_.bos_id();
    if (sp_.eos_id() >= 0) eos.push_back(sp_.eos_id());
    set_special_ids(bos, eos, /*add_bos=*/true);
    return Status::ok();
  }

  std::vector<int32_t> encode_ordinary(const std::string& text) const override {
    std::vector<int> ids;
    const auto status = sp_.Encode(text, &ids);
    // Encode fails only on an unloaded model; input text of any bytes is accepted.
    LLMQ_CHECK(status.ok(), "sentencepiece Encode: " << status.ToString());
    return std::vector<int32_t>(ids.begin(), ids.end());
  }

  std::vector<int32_t> encode_with_specials(const std::string& text) const override {
    std::vector<int32_t> out;
    const std::string_view view(text);
    size_t pos = 0, segment_begin = 0;
    const auto flush = [&](size_t end) {
      if (end > segment_begin) {
        const std::vector<int32_t> ids = encode_ordinary(text.substr(segment_begin, end - segment_begin));
        out.insert(out.end(), ids.begin(), ids.end());
      }
    };
    while (pos < view.size()) {
      const auto it = std::find_if(specials_.begin(), specials_.end(), [&](const auto& s) {
        return view.compare(pos, s.first.size(), s.first) == 0;
      });
      if (it == specials_.end()) {
        ++pos;
        continue;
      }
      flush(pos);
      out.push_back(it->second);
      pos += it->first.size();
      segment_begin = pos;
    }
    flush(view.size());
    return out;
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::vector<int> valid;  // sentencepiece rejects out-of-range ids; drop them as HF does
    valid.reserve(ids.size());
    for (int32_t id : ids) {
      if (id >= 0 && id < sp_.GetPieceSize()) valid.push_back(id);
    }
    std::string text;
    const auto status = sp_.Decode(valid, &text);
    LLMQ_CHECK(status.ok(), "sentencepiece Decode: " << status.ToString());
    return text;
  }

  int64_t vocab_size() const override { return sp_.GetPieceSize(); }

  std::optional<int32_t> token_to_id(const std::string& token) const override {
    const int id = sp_.PieceToId(token);
    // PieceToId answers unk_id for unknown pieces: only trust it when it names the piece.
    if (id < 0 || sp_.IdToPiece(id) != token) return std::nullopt;
    return id;
  }

 private:
  sentencepiece::SentencePieceProcessor sp_;
  std::vector<std::pair<std::string, int32_t>> specials_;  // control and unk pieces, longest first
};

}  // namespace

Expected<std::unique_ptr<VocabTokenizer>> make_sentencepiece_tokenizer(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::error(path + ": cannot open");
  std::ostringstream bytes;
  bytes << in.rdbuf();
  if (!in && !in.eof()) return Status::error(path + ": read failed");
  auto tok = std::make_unique<SentencePieceTokenizer>();
  if (Status s = tok->load(bytes.str()); !s) {
    return Status::error(path + ": not a SentencePiece model (" + s.message() + ")");
  }
  return std::unique_ptr<VocabTokenizer>(std::move(tok));
}

Expected<std::unique_ptr<Tokenizer>> load_sentencepiece_model(const std::string& path) {
  LLMQ_ASSIGN_OR_RETURN(std::unique_ptr<VocabTokenizer> tok, make_sentencepiece_tokenizer(path));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace llmq
