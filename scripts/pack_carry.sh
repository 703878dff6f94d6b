#!/usr/bin/env bash
# Copies the GPU-relevant binaries of a CUDA build (default build-cuda, built for the device's arch)
# into build-carry/{bin,tests}, stripped, for a GPU machine that cannot build (no PCRE2 headers).
# The device takes 64 MiB of carried files, so they travel as build-carry/carry.tar.gz: carry
# ["build-carry", ".testdata"], then run scripts/device_run.sh there (it unpacks and calls
# scripts/gpu_check.sh with BIN=build-carry).
set -euo pipefail
SRC=${1:-build-cuda}
rm -rf build-carry && mkdir -p build-carry/bin build-carry/tests
cp "$SRC"/bin/llmq* build-carry/bin/
for t in test_runner_kernels test_runner_gemv test_runner_attention test_runner_engine test_runner_eval \
         test_gptq_gpu test_awq_gpu test_calibrate_gpu test_pipeline_gpu ${EXTRA_TESTS:-}; do
  [ -x "$SRC/tests/$t" ] && cp "$SRC/tests/$t" build-carry/tests/
done
strip build-carry/bin/* build-carry/tests/*
tar -czf build-carry/carry.tar.gz -C build-carry bin tests && rm -rf build-carry/bin build-carry/tests
# ALT="name=path ...": other builds' binaries (an experiment branch's llmq_runner_bench) for
# STAGE=ab, as build-carry/alt/NAME once `tar -xzf build-carry/alt.tar.gz -C build-carry` ran.
if [ -n "${ALT:-}" ]; then
  mkdir -p build-carry/alt
  for a in $ALT; do cp "${a#*=}" "build-carry/alt/${a%%=*}"; done
  strip build-carry/alt/*
  tar -czf build-carry/alt.tar.gz -C build-carry alt && rm -rf build-carry/alt
fi
du -sh build-carry
