#!/usr/bin/env bash
# `make pipeline` end to end on tinystories-656k (CPU): calibrate, the four quantizers, five
# evals, the report; then a second `make` must find nothing to do (incremental). Then LEAN=1
# for two methods.
# Usage: pipeline_make_test.sh SOURCE_DIR BUILD_DIR. Exit 77 (ctest: skipped) without the data.
set -euo pipefail
src=$1 build=$2
data=${LLMQ_TEST_DATA:-$src/../shared/data}
if [ ! -f "$data/models/tinystories-656k/config.json" ]; then
  if [ "${LLMQ_REQUIRE_TEST_DATA:-}" = 1 ]; then echo "FAIL: test data missing at $data"; exit 1; fi
  echo "SKIP: test data not found at $data (set LLMQ_TEST_DATA)"; exit 77
fi
out=$(mktemp -d "${TMPDIR:-/tmp}/llmq-pipeline-XXXXXX")
trap 'rm -rf "$out"' EXIT
head -c 60000 "$data/text/tinystories_val.txt" > "$out/eval.txt"
args=(-C "$src" --no-print-directory BUILD="$build" MODEL="$data/models/tinystories-656k"
      CALIB="$data/text/calib_mixed.txt" PPL="$out/eval.txt" OUT="$out/run" SAMPLES=32 SEQ_LEN=256
      EVAL_SEQ_LEN=256)
make -j2 pipeline "${args[@]}" > "$out/log" 2>&1 || { cat "$out/log"; exit 1; }

report=$out/run/report.md
for label in tinystories-656k fp8 int8-sq awq gptq; do
  grep -q "^| $label |" "$report" || { echo "FAIL: no row for $label in report.md"; cat "$report"; exit 1; }
done
# Every quantized row has a perplexity and a delta against the BF16 row.
rows=$(grep -cE '^\| (fp8|int8-sq|awq|gptq) \|.*\| [+-][0-9.]+ \([+-][0-9.]+%\) \|' "$report" || true)
[ "$rows" = 4 ] || { echo "FAIL: expected 4 rows with a perplexity delta, got $rows"; cat "$report"; exit 1; }
make -q "$out/run/report.md" "${args[@]}" || { echo "FAIL: a second make would redo work (not incremental)"; exit 1; }

# LEAN=1 (little scratch disk): the same rows from its own calibration without Hessians (the
# same samples, so the same statistics), each checkpoint deleted once evaluated, its quantize
# report kept; incremental too.
lean=(-C "$src" --no-print-directory BUILD="$build" MODEL="$data/models/tinystories-656k"
      CALIB="$data/text/calib_mixed.txt" PPL="$out/eval.txt" OUT="$out/lean" SAMPLES=32 SEQ_LEN=256
      EVAL_SEQ_LEN=256 METHODS="fp8 gptq" LEAN=1)
make -j2 pipeline "${lean[@]}" > "$out/lean.log" 2>&1 || { cat "$out/lean.log"; exit 1; }
grep -q "no Hessians" "$out/lean.log" || { echo "FAIL: LEAN=1 calibrated with Hessians"; exit 1; }
for m in fp8 gptq; do
  [ ! -e "$out/lean/$m" ] || { echo "FAIL: LEAN=1 left the $m checkpoint"; exit 1; }
  grep -q '"timings"' "$out/lean/$m.quantize.json" || { echo "FAIL: LEAN=1 lost $m's quantize report"; exit 1; }
  [ "$(grep "^| $m |" "$out/lean/report.md")" = "$(grep "^| $m |" "$report")" ] ||
    { echo "FAIL: LEAN=1 row for $m differs"; grep "^| $m |" "$out/lean/report.md" "$report"; exit 1; }
done
make -q "$out/lean/report.md" "${lean[@]}" || { echo "FAIL: LEAN=1: a second make would redo work"; exit 1; }
echo "PASS: make pipeline on tinystories-656k (and LEAN=1)"
