#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "formats/hf_config.h"
#include "formats/safetensors.h"
#include "tools/commands.h"

namespace llmq::cli {

namespace {

std::string human_bytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1000 && u < 4) {
    b /= 1000;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return buf;
}

Status run_inspect(const std::string& dir) {
  const std::string config_path = dir + "/config.json";
  std::ifstream in(config_path);
  if (!in) return Status::error(config_path + ": cannot open");
  std::stringstream text;
  text << in.rdbuf();
  LLMQ_ASSIGN_OR_RETURN(LlamaConfig c, parse_llama_config(text.str(), config_path));
  const nlohmann::json raw = nlohmann::json::parse(text.str(), nullptr, false);
  LLMQ_ASSIGN_OR_RETURN(CheckpointTensors tensors, CheckpointTensors::open(dir));

  std::printf("checkpoint   %s\n", dir.c_str());
  std::printf("shape        hidden %lld, intermediate %lld, layers %lld, heads %lld/%lld kv, head_dim %lld, vocab %lld\n",
              (long long)c.hidden_size, (long long)c.intermediate_size, (long long)c.num_hidden_layers,
              (long long)c.num_attention_heads, (long long)c.num_key_value_heads, (long long)c.head_dim,
              (long long)c.vocab_size);
  std::printf("rope         theta %g%s, max positions %lld, rms_norm_eps %g, tied embeddings %s\n", c.rope_theta,
              c.rope_scaling ? (", scaling " + c.rope_scaling->type).c_str() : "",
              (long long)c.max_position_embeddings, c.rms_norm_eps, c.tie_word_embeddings ? "yes" : "no");
  std::map<std::string, std::pair<int64_t, uint64_t>> by_dtype;  // dtype -> (tensors, bytes)
  int64_t count = 0;
  uint64_t total = 0;
  for (const auto& f : tensors.files()) {
    for (const auto& e : f.entries()) {
      auto& slot = by_dtype[std::string(dtype_name(e.dtype))];
      slot.first += 1;
      slot.second += e.end - e.begin;
      total += e.end - e.begin;
      ++count;
    }
  }
  std::printf("files        %zu safetensors, %lld tensors, %s\n", tensors.files().size(), (long long)count,
              human_bytes(static_cast<double>(total)).c_str());
  for (const auto& [name, slot] : by_dtype)
    std::printf("  %-8s   %6lld tensors  %s\n", name.c_str(), (long long)slot.first,
                human_bytes(static_cast<double>(slot.second)).c_str());
  if (raw.is_object() && raw.contains("quantization_config")) {
    std::printf("quantization_config\n%s\n", raw["quantization_config"].dump(2).c_str());
  } else {
    std::printf("quantization none (%s weights)\n", c.torch_dtype.c_str());
  }
  return Status::ok();
}

}  // namespace

void add_inspect_command(CLI::App& app, CommandRunner& run) {
  auto dir = std::make_shared<std::string>();
  CLI::App* sub = app.add_subcommand("inspect", "Summarise a checkpoint: shape, tensors, bytes by dtype, quantization");
  sub->add_option("dir", *dir, "Checkpoint directory")->required();
  sub->callback([dir, &run] { run = [dir] { return run_inspect(*dir); }; });
}

}  // namespace llmq::cli
