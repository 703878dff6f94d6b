// The perplexity the GPU-vs-CPU pipeline tests compare: a checkpoint's bf16 CPU evaluation on
// the first 60 000 characters of TinyStories validation, windows of 256 (test_pipeline's
// measure). 0 (and a test failure) when the checkpoint does not load.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "eval/perplexity.h"
#include "formats/checkpoint.h"
#include "formats/tokenizer.h"
#include "model/llama.h"
#include "tests/test_data.h"

namespace llmq::testing {

inline double tinystories_ppl(const std::string& dir) {
  auto ckpt = HfCheckpoint::open(dir);
  EXPECT_TRUE(ckpt.has_value()) << ckpt.status().message();
  if (!ckpt.has_value()) return 0;
  auto model = LlamaModel::load(*ckpt);
  auto tok = load_tokenizer(dir);
  EXPECT_TRUE(model.has_value() && tok.has_value());
  if (!model.has_value() || !tok.has_value()) return 0;
  const std::string text = read_all(test_data_dir() + "/text/tinystories_val.txt").substr(0, 60000);
  PerplexityConfig pc;
  pc.window = 256;
  pc.precision = Precision::kBFloat16;
  auto r = perplexity(*model, (*tok)->encode(text), pc);
  EXPECT_TRUE(r.has_value());
  return r.has_value() ? r->ppl : 0;
}

}  // namespace llmq::testing
