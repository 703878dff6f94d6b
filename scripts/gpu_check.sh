#!/usr/bin/env bash
# On a GPU machine, with binaries built for its arch (BIN, default build): the GPU tests that
# are built (TESTS), the kernel benchmarks, and (STAGE=bench) the end-to-end benchmark of every
# format on a synthetic Llama-3.1-8B beside the PyTorch peer. Logs go to $OUT (default out/gpu).
# Test data: LLMQ_TEST_DATA (default .testdata, made by scripts/make_testdata.sh from ../shared/data).
# KERNEL_BENCH=0 skips the kernel benchmarks after the tests; experiment branches' test binaries
# packed as ALT="NAME_test_runner_x=path" (build-carry/alt) run after this build's own. Bench knobs: FORMATS, BATCHES, PROFILE=1 (per-op times of one eager decode step and of one prefill per batch size), PEER=path.
# STAGE=ab: the benchmark of each of FORMATS (default bs 1, BATCHES) with each of VARIANTS, bench
# binaries packed by `ALT=... scripts/pack_carry.sh` (main: this build's own).
# STAGE=ncu: Nsight Compute on the kernel benchmark (below).
# STAGE=quantize: `llmq quantize --device gpu` of the synthetic 8B with each of METHODS (default
# "fp8 int8-sq gptq"; calibration SAMPLES x SEQ_LEN tokens, default 128 x 2048, of the text below),
# printing wall time, max RSS and the report's stage timings and memory peaks; CALIBRATE=1 first
# times `llmq calibrate --device gpu` on the same samples. The text is calib_mixed.txt followed
# by wikitext2_test.txt (when LLMQ_TEST_DATA has it): under the synthetic checkpoint's byte-level
# tokenizer calib_mixed.txt alone holds only 98 windows of 2048 tokens. CALIB_TEXT replaces it.
set -uo pipefail
BIN=${BIN:-build}
OUT=${OUT:-out/gpu}
STAGE=${STAGE:-tests}
export LLMQ_TEST_DATA=${LLMQ_TEST_DATA:-.testdata} LLMQ_REQUIRE_TEST_DATA=1 LLMQ_REQUIRE_GPU=1
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv,noheader

# A suite's exit status and counts, and its first failures' messages on stdout: the device
# returns only a few files, so a failure must be readable from the output alone.
report() {
  echo "$1: exit $2"; grep -E "^\[  (FAILED|PASSED|SKIPPED) " "$OUT/$1.log" | head -20
  # One line per suite in summary.txt, which device_run.sh prints last (a long benchmark
  # output can push the lines above out of the returned tail).
  echo "$1: exit $2, $(grep -cE '^\[       OK' "$OUT/$1.log") ok, $(grep -cE '^\[  FAILED  \] [A-Za-z]' "$OUT/$1.log" | awk '{print int($1/2)}') failed" >> "$OUT/summary.txt"
  [ "$2" = 0 ] || grep -B1 -A4 -E "Failure$|error: " "$OUT/$1.log" | head -${FAILURE_LINES:-40}
}

if [ "$STAGE" = tests ]; then
  for t in ${TESTS:-test_runner_kernels test_runner_gemv test_runner_attention test_runner_engine test_runner_eval test_gptq_gpu test_awq_gpu test_calibrate_gpu test_pipeline_gpu}; do
    [ -x "$BIN/tests/$t" ] || { echo "$t: not built"; continue; }
    timeout 300 "$BIN/tests/$t" > "$OUT/$t.log" 2>&1
    report "$t" $?
  done
  for f in "$BIN"/alt/*_test_*; do  # experiment branches' suites packed as ALT="NAME_test_x=path"
    [ -x "$f" ] || continue
    t=$(basename "$f"); timeout 300 "$f" > "$OUT/$t.log" 2>&1
    report "$t" $?
  done
  if [ "${KERNEL_BENCH:-1}" = 1 ]; then
    timeout 120 "$BIN/bin/llmq_runner_bench" --kernels 2>&1 | tee "$OUT/kernels.txt"
    for b in llmq_attention_bench llmq_gptq_bench; do
      [ -x "$BIN/bin/$b" ] && timeout 180 "$BIN/bin/$b" 2>&1 | tee "$OUT/$b.txt"
    done
  fi
fi

if [ "$STAGE" = bench ]; then
  M=${SYNTH_DIR:-/tmp/synth-8b}
  [ -f "$M/config.json" ] || timeout 300 "$BIN/bin/llmq_runner_bench" --synth llama-3.1-8b "$M" > "$OUT/synth.log" 2>&1
  for f in ${FORMATS:-bf16 fp8 int8 w4a16}; do
    rtn=(); [ "$f" = bf16 ] || rtn=(--rtn "$f")
    timeout 240 "$BIN/bin/llmq_runner_bench" --model "$M" "${rtn[@]}" --batches ${BATCHES:-1,16,64} \
      ${PROFILE:+--profile 1} --json "$OUT/bench-$f.json" 2>&1 | tee "$OUT/bench-$f.txt"
  done
  # The peer measures the same formats (its names are ours).
  formats=${FORMATS:-bf16 fp8 int8 w4a16}
  [ -n "${PEER:-}" ] && timeout 400 python3 "$PEER" --formats "${formats// /,}" --batches ${BATCHES:-1,16,64} 2>&1 |
    tee "$OUT/peer.txt"
fi

if [ "$STAGE" = ab ]; then  # A/B of bench binaries in one run: VARIANTS (main = $BIN/bin, NAME = $BIN/alt/NAME)
  M=${SYNTH_DIR:-/tmp/synth-8b}
  [ -f "$M/config.json" ] || timeout 300 "$BIN/bin/llmq_runner_bench" --synth llama-3.1-8b "$M" > "$OUT/synth.log" 2>&1
  for f in ${FORMATS:-bf16 fp8 int8 w4a16}; do
    rtn=(); [ "$f" = bf16 ] || rtn=(--rtn "$f")
    for v in ${VARIANTS:-main}; do
      bin=$BIN/bin/llmq_runner_bench; [ "$v" = main ] || bin=$BIN/alt/$v
      timeout 150 "$bin" --model "$M" "${rtn[@]}" --batches ${BATCHES:-1} ${PROFILE:+--profile 1} > "$OUT/ab-$f-$v.txt" 2>&1
      echo "== $f $v: exit $?"; grep -A4 ' batch ' "$OUT/ab-$f-$v.txt" | tail -n +2
    done
  done
fi

# STAGE=ncu: Nsight Compute on the kernel benchmark (llmq_runner_bench --kernels, or NCU_BIN),
# kernels whose name matches NCU_KERNELS (a regex, default the W4A16 and W8A8 decode GEMVs),
# NCU_COUNT launches of them (default 6) after skipping NCU_SKIP (default 0), with the
# throughput, memory, warp-state, occupancy and launch sections plus each stall reason's share
# of the warps' cycles and the tensor pipe's activity (printed where a stall reason is over 2%).
# ncu is looked for on PATH and in the usual install folders (the H200 machine has
# /usr/local/cuda/bin/ncu; it profiles at base clocks, so its durations run long).
if [ "$STAGE" = ncu ]; then
  NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  if [ -z "$NCU" ]; then echo "ncu: not installed"; else
    echo "ncu: $NCU"
    timeout 500 "$NCU" -k "regex:${NCU_KERNELS:-mma_direct|mma_gemv|gemv_kernel}" -s "${NCU_SKIP:-0}" -c "${NCU_COUNT:-6}" \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
      --section LaunchStats --section InstructionStats \
      --metrics "regex:smsp__warp_issue_stalled_.*_per_warp_active.pct,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active" \
      ${NCU_BIN:-$BIN/bin/llmq_runner_bench --kernels} > "$OUT/ncu.txt" 2>&1
    echo "ncu: exit $?"
    grep -E "^  [a-z_].*\(|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Waves Per SM|Warp Cycles Per Issued|Compute \(SM\)|Executed Instructions  |hmma|stalled_" "$OUT/ncu.txt" |
      awk '!/stalled_/ || $NF + 0 > 2' | head -${NCU_LINES:-150}
  fi
fi

if [ "$STAGE" = quantize ]; then
  M=${SYNTH_DIR:-/tmp/synth-8b}
  if [ -z "${CALIB_TEXT:-}" ]; then  # 128 full windows: calib_mixed.txt, then WikiText-2 test when there
    CALIB_TEXT=/tmp/calib_long.txt
    cat "$LLMQ_TEST_DATA/text/calib_mixed.txt" $(ls "$LLMQ_TEST_DATA/text/wikitext2_test.txt" 2>/dev/null) > "$CALIB_TEXT"
  fi
  [ -f "$M/config.json" ] || timeout 300 "$BIN/bin/llmq_runner_bench" --synth llama-3.1-8b "$M" > "$OUT/synth.log" 2>&1
  if [ "${CALIBRATE:-0}" = 1 ]; then  # llmq calibrate --device gpu, Hessians included
    /usr/bin/time -f "calibrate: wall %e s, max RSS %M KB" timeout 580 "$BIN/bin/llmq" calibrate --model "$M" \
      --device gpu --dataset "$CALIB_TEXT" --samples "${SAMPLES:-128}" \
      --seq-len "${SEQ_LEN:-2048}" --out /tmp/c8b.safetensors --force > "$OUT/calibrate.log" 2>&1
    tail -3 "$OUT/calibrate.log"; ls -la /tmp/c8b.safetensors; rm -f /tmp/c8b.safetensors
  fi
  for m in ${METHODS-fp8 int8-sq gptq}; do
    calib=(); [ "$m" = fp8 ] || [ "${m#rtn}" != "$m" ] || \
      calib=(--dataset "$CALIB_TEXT" --samples "${SAMPLES:-128}" --seq-len "${SEQ_LEN:-2048}")
    /usr/bin/time -f "$m: wall %e s, max RSS %M KB" timeout 580 "$BIN/bin/llmq" quantize --model "$M" --method "$m" \
      --device gpu "${calib[@]}" --out "/tmp/q8b-$m" --force > "$OUT/quantize-$m.log" 2>&1
    tail -2 "$OUT/quantize-$m.log"
    python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['timings']; t.pop('layers_s', None); print(sys.argv[2], json.dumps(t))" \
      "/tmp/q8b-$m/llmq_report.json" "$m" 2>&1 | tee -a "$OUT/quantize.txt"
    grep -h "windows available" "$OUT/quantize-$m.log"  # fewer windows than SAMPLES
    [ "$m" = awq ] && python3 scripts/awq_notes.py "/tmp/q8b-$m/llmq_report.json" | tail -1
    rm -rf "/tmp/q8b-$m"  # 64 GB of scratch: keep one output at a time
  done
fi
