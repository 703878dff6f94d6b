#!/usr/bin/env bash
# The ecosystem loader check (issue #7): quantize Llama checkpoints with llmq in every format,
# write llmq's own dequantization and CPU-forward logits of each, then load them with the
# ecosystem's loaders (check_loaders.py beside this file) and write the record
# docs/compat/loaders.{md,json}. Nothing here is a build or runtime dependency of llmq.
#
#   scripts/ecosystem/run.sh --setup   # create the Python venv ($PY's folder) from PyPI first
#   scripts/ecosystem/run.sh           # build checkpoints, run the checks, write the record
#
# Environment (defaults in brackets):
#   LLMQ    the llmq binary [build/bin/llmq]
#   VENV    Python venv with the loaders [/tmp/venv-compat]; never inside the repo
#   WORK    scratch directory for checkpoints [/tmp/llmq-ecosystem]
#   DATA    shared data (models, text) [$LLMQ_TEST_DATA or ../shared/data]
#   MODELS  which models ["tinystories-656k synth-llama-3.2-1b"]
#   RECORD  where the record goes [docs/compat]
#   REUSE=1 keep checkpoints already in WORK (development only; the record notes it)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LLMQ=${LLMQ:-$ROOT/build/bin/llmq}
VENV=${VENV:-/tmp/venv-compat}
PY=$VENV/bin/python
WORK=${WORK:-/tmp/llmq-ecosystem}
DATA=${DATA:-${LLMQ_TEST_DATA:-$ROOT/../shared/data}}
MODELS=${MODELS:-"tinystories-656k synth-llama-3.2-1b"}
RECORD=${RECORD:-$ROOT/docs/compat}
REUSE=${REUSE:-0}

# The loaders, from PyPI. torch's default PyPI wheel is CUDA-built and runs on CPU. autoawq
# ships only an sdist that declares heavy deps (--no-deps, then what it imports); auto-gptq's
# wheel predates transformers 5 (--no-deps; its package __init__ no longer imports, so the
# check imports its QuantLinear module file directly); gptqmodel builds its kernels lazily.
setup_venv() {
  case "$VENV" in "$ROOT"/*) echo "run.sh: VENV must be outside the repository" >&2; exit 2 ;; esac
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --upgrade pip
  "$VENV/bin/pip" install torch transformers compressed-tensors safetensors numpy accelerate optimum datasets zstandard
  "$VENV/bin/pip" install --no-build-isolation gptqmodel
  "$VENV/bin/pip" install --no-deps --no-build-isolation autoawq
  "$VENV/bin/pip" install --no-deps auto-gptq
}

if [[ "${1:-}" == "--setup" ]]; then
  setup_venv
  exit 0
fi

[[ -x "$LLMQ" ]] || { echo "run.sh: no llmq binary at $LLMQ (set LLMQ)" >&2; exit 2; }
[[ -x "$PY" ]] || { echo "run.sh: no Python venv at $VENV (run: scripts/ecosystem/run.sh --setup)" >&2; exit 2; }
mkdir -p "$WORK"
MANIFEST=$WORK/manifest.tsv
NOTES=$WORK/notes.txt
printf 'model\tname\tformat\tcommand\tckpt\tdeq_f32\tdeq_native\tlogits\tsource_logits\n' > "$MANIFEST"
: > "$NOTES"
[[ "$REUSE" == 1 ]] && echo "REUSE=1: checkpoints already in the work directory were reused" >> "$NOTES"

# step DIR CMD...: runs CMD unless REUSE=1 and DIR exists.
step() {
  local out=$1
  shift
  if [[ "$REUSE" == 1 && -e "$out" ]]; then return 0; fi
  echo "+ ${*#$ROOT/}" >&2
  "$@" >/dev/null
}

# checkpoint MODEL NAME NATIVE_DTYPE QUANTIZE_ARGS...: quantize, dequantize (f32 and the
# format's dtype), logits of the first window; one manifest row.
checkpoint() {
  local model=$1 name=$2 native=$3
  shift 3
  local d=$WORK/$model/$name
  mkdir -p "$WORK/$model"
  step "$d" "$LLMQ" quantize --model "$SRC" --out "$d" --force "$@"
  step "$d.deq-f32" "$LLMQ" dequantize --model "$d" --out "$d.deq-f32" --dtype f32 --force
  step "$d.deq-$native" "$LLMQ" dequantize --model "$d" --out "$d.deq-$native" --dtype "$native" --force
  step "$d.logits.safetensors" "$LLMQ" eval --model "$d" --ppl "$TEXT" --seq-len "$WINDOW" --limit-tokens "$TOKENS" \
    --logits-out "$d.logits.safetensors" --force
  local format
  format=$("$PY" -c "import json,sys; q=json.load(open(sys.argv[1]))['quantization_config']; \
print(q['quant_method'] + ('/' + q['format'] if q.get('format') and q['quant_method']=='compressed-tensors' else ''))" "$d/config.json")
  local cmd="llmq quantize --model SOURCE $*"
  cmd=${cmd//$WORK/WORK}
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$model" "$name" "$format" "$cmd" "$d" "$d.deq-f32" \
    "$d.deq-$native" "$d.logits.safetensors" "$WORK/$model/source.logits.safetensors" >> "$MANIFEST"
}

source_logits() {
  step "$WORK/$1/source.logits.safetensors" "$LLMQ" eval --model "$SRC" --ppl "$TEXT" --seq-len "$WINDOW" \
    --limit-tokens "$TOKENS" --logits-out "$WORK/$1/source.logits.safetensors" --force
}

for model in $MODELS; do
  mkdir -p "$WORK/$model"
  case "$model" in
    tinystories-656k)
      SRC=$DATA/models/tinystories-656k
      TEXT=$DATA/text/tinystories_val.txt WINDOW=256 TOKENS=512
      CALIB=$WORK/$model/calib.safetensors
      step "$CALIB" "$LLMQ" calibrate --model "$SRC" --dataset "$DATA/text/calib_mixed.txt" --samples 32 --seq-len 256 \
        --out "$CALIB" --force
      source_logits "$model"
      checkpoint "$model" fp8 bf16 --method fp8
      checkpoint "$model" int8-sq bf16 --method int8-sq --calib "$CALIB"
      checkpoint "$model" rtn-int8 bf16 --method rtn-int8
      checkpoint "$model" gptq-ct bf16 --method gptq --format compressed-tensors --calib "$CALIB"
      checkpoint "$model" gptq-ct-asym-actorder bf16 --method gptq --format compressed-tensors --asym --act-order \
        --calib "$CALIB"
      checkpoint "$model" awq-ct bf16 --method awq --format compressed-tensors --calib "$CALIB"
      checkpoint "$model" awq f16 --method awq --calib "$CALIB"
      checkpoint "$model" gptq f16 --method gptq --calib "$CALIB"
      checkpoint "$model" gptq-actorder f16 --method gptq --act-order --calib "$CALIB"
      checkpoint "$model" rtn-int4 f16 --method rtn-int4
      ;;
    synth-llama-3.2-1b)
      # Llama-3.2-1B's shapes (16 layers, hidden 2048, intermediate 8192, vocab 128256, tied
      # embeddings) with random weights. On 2 CPU cores one GPTQ pass takes ~15 minutes, so GPTQ
      # runs once (compressed-tensors); the GPTQ v1 layout is exercised by rtn-int4 and AWQ with
      # a 4-point scale grid and no clip search (the files' layout is the same).
      SRC=$WORK/$model/source
      TEXT=$DATA/text/tinystories_val.txt WINDOW=64 TOKENS=128
      CALIB=$WORK/$model/calib.safetensors
      step "$SRC" "$LLMQ" synth --config llama-3.2-1b --seed 0 --out "$SRC" --force
      step "$CALIB" "$LLMQ" calibrate --model "$SRC" --dataset "$DATA/text/calib_mixed.txt" --samples 8 --seq-len 128 \
        --out "$CALIB" --force
      source_logits "$model"
      checkpoint "$model" fp8 bf16 --method fp8
      checkpoint "$model" int8-sq bf16 --method int8-sq --calib "$CALIB"
      checkpoint "$model" gptq-ct bf16 --method gptq --format compressed-tensors --calib "$CALIB"
      checkpoint "$model" awq f16 --method awq --awq-grid 4 --no-clip --calib "$CALIB"
      checkpoint "$model" rtn-int4-gptq f16 --method rtn-int4
      echo "synth-llama-3.2-1b: GPTQ v1 layout via rtn-int4 and AWQ with --awq-grid 4 --no-clip, to fit 2 CPU cores (the tiny model runs the full methods)" >> "$NOTES"
      ;;
    *) echo "run.sh: unknown model '$model'" >&2; exit 2 ;;
  esac
done

COMMAND="MODELS=\"$MODELS\" scripts/ecosystem/run.sh"
"$PY" "$ROOT/scripts/ecosystem/check_loaders.py" --manifest "$MANIFEST" --record "$RECORD" --command "$COMMAND" \
  --notes "$NOTES"
