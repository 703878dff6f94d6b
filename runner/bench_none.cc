// run_bench in a build without CUDA.
#include "runner/bench.h"

namespace llmq {

Expected<BenchResult> run_bench(const BenchOptions&) { return Status::error("llmq was built without CUDA: no runner benchmark"); }
double measure_hbm_read_gbps() { return 0.0; }

}  // namespace llmq
