// Calibration datasets -> token sequences (DESIGN.md, data flow step 1).
//
// Three kinds:
//   text   the whole file tokenized once (ordinary text, no BOS), cut into non-overlapping
//          windows of seq_len - 1 tokens (seq_len when the tokenizer adds no BOS); a sample is
//          BOS + window, so every sample has exactly seq_len tokens.
//   jsonl  one JSON object per line, the string field `field` is one sample: encode(text)
//          (BOS when the tokenizer adds it), truncated to seq_len. Blank lines and empty
//          strings are skipped.
//   chat   one JSON object per line with "messages": [{"role", "content"}, ...], rendered with
//          the Llama-3 chat template (chat_template.h), encoded with the special tokens
//          recognised and no extra BOS, truncated to seq_len.
// Sampling: N of the available windows / lines uniformly at random without replacement,
// driven by std::mt19937_64(seed) through a portable bounded draw (so the choice is the same
// with any standard library), kept in dataset order. Fewer available than asked: all of them,
// in order, with a warning.
// Bad input is a one-line Status "FILE: line N: problem".
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "formats/tokenizer.h"

namespace llmq {

enum class DatasetKind : uint8_t { kText, kJsonl, kChat };
std::string_view dataset_kind_name(DatasetKind kind);  // "text" / "jsonl" / "chat"

struct DatasetSpec {
  std::string path;
  DatasetKind kind = DatasetKind::kText;
  std::string field = "text";  // kJsonl: the string field that holds a sample
};

struct CalibrationSamples {
  std::vector<std::vector<int32_t>> samples;  // each 1..seq_len token ids
  int64_t available = 0;                      // windows / usable lines in the dataset
  std::string warning;                        // set when fewer than requested were available
  int64_t tokens() const;
};

// `wanted` distinct indices of [0, available) chosen uniformly with mt19937_64(seed), sorted
// ascending; all of [0, available) when wanted >= available.
std::vector<int64_t> choose_indices(int64_t available, int64_t wanted, uint64_t seed);

// Text-kind windowing of already tokenized ids (pure; load_dataset uses it).
// bos: prepended to every window when set. Error when not even one window fits.
Expected<CalibrationSamples> text_samples(const std::vector<int32_t>& ids, std::optional<int32_t> bos,
                                          int64_t samples, int64_t seq_len, uint64_t seed,
                                          const std::string& origin);

// Reads, parses, tokenizes and samples a dataset. tokenizer_name names the tokenizer in
// errors (e.g. the checkpoint directory).
Expected<CalibrationSamples> load_dataset(const DatasetSpec& spec, const Tokenizer& tokenizer,
                                          const std::string& tokenizer_name, int64_t samples,
                                          int64_t seq_len, uint64_t seed);

// The whole file as bytes; "PATH: cannot read" style errors.
Expected<std::string> read_file_bytes(const std::string& path);

}  // namespace llmq
