#include "tools/dataset_options.h"

namespace llmq::cli {

DatasetOptions::DatasetOptions(CLI::App* sub, DatasetSpec& spec, bool required) {
  CLI::Option* path = sub->add_option("--dataset", spec.path, "Calibration data file");
  if (required) path->required();
  CLI::Option* text = sub->add_flag("--text", "Dataset is plain text, cut into windows (default)");
  jsonl_ = sub->add_option("--jsonl", *jsonl_field_, "Dataset is JSONL; this string field is one sample");
  chat_ = sub->add_flag("--chat", "Dataset is JSONL with \"messages\", rendered with the Llama-3 chat template");
  text->excludes(jsonl_)->excludes(chat_);
  jsonl_->excludes(chat_);
}

void DatasetOptions::resolve(DatasetSpec& spec) const {
  if (*jsonl_) {
    spec.kind = DatasetKind::kJsonl;
    spec.field = *jsonl_field_;
  } else if (*chat_) {
    spec.kind = DatasetKind::kChat;
  } else {
    spec.kind = DatasetKind::kText;
  }
}

}  // namespace llmq::cli
