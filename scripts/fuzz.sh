#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for a bounded time.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
command -v clang++ >/dev/null || { echo "fuzz: clang++ not found (apt-get install clang)"; exit 2; }
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DLLMQ_FUZZ=ON -DLLMQ_BUILD_TESTS=OFF \
  -DLLMQ_ENABLE_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build-fuzz fuzz_safetensors fuzz_tokenizer_json
mkdir -p build-fuzz/corpus/safetensors build-fuzz/corpus/tokenizer_json
data=${LLMQ_TEST_DATA:-../shared/data}
# Seed corpora: real headers and tokenizer files when the shared data is present.
if [ -d "$data/models" ]; then
  for m in "$data"/models/*/; do
    n=$(basename "$m")
    head -c 65536 "$m/model.safetensors" > "build-fuzz/corpus/safetensors/$n" || true
    cp "$m/tokenizer.json" "build-fuzz/corpus/tokenizer_json/$n.json" || true
  done
fi
./build-fuzz/fuzz/fuzz_safetensors -max_total_time="$seconds" -max_len=65536 build-fuzz/corpus/safetensors
./build-fuzz/fuzz/fuzz_tokenizer_json -max_total_time="$seconds" -max_len=65536 build-fuzz/corpus/tokenizer_json
echo "fuzz: both targets ran ${seconds}s each without a crash"
