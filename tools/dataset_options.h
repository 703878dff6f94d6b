// The dataset options shared by `calibrate` and `quantize`: --dataset FILE with one of
// --text (default), --jsonl FIELD, --chat.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "calibration/dataset.h"

namespace llmq::cli {

class DatasetOptions {
 public:
  // Registers the options on sub, writing the path into spec.path.
  DatasetOptions(CLI::App* sub, DatasetSpec& spec, bool required);
  // Sets spec.kind / spec.field from the flags; call in the subcommand's callback.
  void resolve(DatasetSpec& spec) const;

 private:
  std::shared_ptr<std::string> jsonl_field_ = std::make_shared<std::string>();
  CLI::Option* jsonl_ = nullptr;
  CLI::Option* chat_ = nullptr;
};

}  // namespace llmq::cli
