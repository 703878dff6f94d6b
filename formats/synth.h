// Synthetic checkpoints: named Llama shapes and a writer for random-weight BF16 checkpoints
// in Hugging Face layout, so the whole pipeline can be run and timed at real scale without
// real weights. Deterministic: every tensor's values depend only on (seed, tensor name).
// The tokenizer written alongside is a byte-level BPE without merges (one token per byte,
// Llama-3 split pattern and special-token ids), unless one is copied from a real checkpoint.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "formats/hf_config.h"

namespace llmq {

struct SynthPreset {
  std::string name;
  LlamaConfig config;
  uint64_t max_shard_bytes;  // shard like the real checkpoint does
};

const std::vector<SynthPreset>& synth_presets();
Expected<SynthPreset> find_synth_preset(const std::string& name);

struct SynthOptions {
  uint64_t seed = 0;
  double weight_std = 0.02;  // initializer_range of the Llama configs
  std::string tokenizer_from;  // directory to copy tokenizer files from; empty: byte-level
  // Decoder layers to write; 0: the preset's. Tensors are seeded by name, so a model cut to N
  // layers holds the full model's first N layers bit for bit (a 70B-shaped model that fits a
  // disk and a GPU, to run every kernel at 70B's dimensions).
  int64_t num_layers = 0;
};

// Writes a complete checkpoint into `dir` (which must exist and be empty; callers stage it).
Status write_synthetic_checkpoint(const SynthPreset& preset, const SynthOptions& options,
                                  const std::string& dir);

// config.json text for a LlamaConfig, with the keys transformers writes.
std::string llama_config_json(const LlamaConfig& c);

}  // namespace llmq
