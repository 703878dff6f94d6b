// Table and JSON of a BenchResult (shared by the CUDA and CPU-only builds).
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "runner/bench.h"

namespace llmq {

std::string bench_table(const BenchResult& r) {
  std::ostringstream o;
  char line[256];
  std::snprintf(line, sizeof line, "model %s  format %s  device %s\n", r.model_dir.c_str(), r.format.c_str(), r.device.c_str());
  o << line;
  std::snprintf(line, sizeof line,
                "weights %.2f GiB (%.2f GiB read per step)  peak GPU memory %.2f GiB  HBM read %.0f GB/s  in %d  out %d\n",
                r.weight_bytes / 1073741824.0, r.step_weight_bytes / 1073741824.0, r.peak_gpu_bytes / 1073741824.0,
                r.hbm_read_gbps, r.input_len, r.output_len);
  o << line;
  std::snprintf(line, sizeof line, "%6s %12s %12s %14s %12s %10s %10s\n", "batch", "total ms", "prefill ms",
                "decode ms/step", "gen tok/s", "floor ms", "step/floor");
  o << line;
  for (const BenchRow& b : r.rows) {
    std::snprintf(line, sizeof line, "%6d %12.1f %12.1f %14.3f %12.1f %10.3f %10.2f\n", b.batch, b.total_ms,
                  b.prefill_ms, b.decode_ms_per_step, b.tokens_per_s, b.floor_ms, b.floor_ratio);
    o << line;
  }
  const auto profile_line = [&](const std::vector<std::pair<std::string, double>>& profile, const char* what, int batch) {
    if (profile.empty()) return;
    double total = 0;
    for (const auto& [op, ms] : profile) total += ms;
    std::snprintf(line, sizeof line, "%s, batch %d: %.3f ms =", what, batch, total);
    o << line;
    for (const auto& [op, ms] : profile) {
      std::snprintf(line, sizeof line, " %s %.3f (%.0f%%)", op.c_str(), ms, 100.0 * ms / total);
      o << line;
    }
    o << "\n";
  };
  for (const BenchRow& b : r.rows) {
    profile_line(b.step_profile, "eager decode step", b.batch);
    profile_line(b.prefill_profile, "prefill", b.batch);
    if (b.replay_ms_per_step > 0) {
      std::snprintf(line, sizeof line, "decode step graph replayed back to back, batch %d: %.3f ms (the loop: %.3f)\n",
                    b.batch, b.replay_ms_per_step, b.decode_ms_per_step);
      o << line;
    }
  }
  return o.str();
}

std::string bench_json(const BenchResult& r) {
  nlohmann::ordered_json j;
  j["model"] = r.model_dir;
  j["format"] = r.format;
  j["device"] = r.device;
  j["input_len"] = r.input_len;
  j["output_len"] = r.output_len;
  j["weight_bytes"] = r.weight_bytes;
  j["step_weight_bytes"] = r.step_weight_bytes;
  j["peak_gpu_bytes"] = r.peak_gpu_bytes;
  j["hbm_read_gbps"] = r.hbm_read_gbps;
  for (const BenchRow& b : r.rows)
    j["batches"].push_back({{"batch", b.batch},
                            {"total_ms", b.total_ms},
                            {"prefill_ms", b.prefill_ms},
                            {"decode_ms_per_step", b.decode_ms_per_step},
                            {"tokens_per_s", b.tokens_per_s},
                            {"floor_ms", b.floor_ms},
                            {"decode_floor_ratio", b.floor_ratio}});
  for (size_t i = 0; i < r.rows.size(); ++i) {
    for (const auto& [op, ms] : r.rows[i].step_profile) j["batches"][i]["eager_step_profile_ms"][op] = ms;
    for (const auto& [op, ms] : r.rows[i].prefill_profile) j["batches"][i]["prefill_profile_ms"][op] = ms;
    if (r.rows[i].replay_ms_per_step > 0) j["batches"][i]["replay_ms_per_step"] = r.rows[i].replay_ms_per_step;
  }
  return j.dump(2);
}

}  // namespace llmq
