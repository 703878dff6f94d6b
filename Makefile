# llmq: build, test tiers and pipelines. `make demo` runs the whole job on a synthetic model;
# `make test` runs the CPU test suite.
BUILD ?= build
JOBS ?= $(shell nproc)
LLMQ := $(BUILD)/bin/llmq
DEMO ?= demo

.PHONY: all setup configure build test test-gpu fuzz demo pipeline clean

all: build

setup:
	@bash scripts/setup.sh

$(BUILD)/build.ninja: | setup
	cmake -S . -B $(BUILD) -G Ninja

configure: $(BUILD)/build.ninja

build: configure
	cmake --build $(BUILD) -j $(JOBS)

# CPU tests (GPU tests skip without a GPU); the shared test data is used when present.
test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# On a GPU machine: the same suite, GPU tests included, failing if no GPU is visible.
test-gpu: build
	cd $(BUILD) && LLMQ_REQUIRE_GPU=1 ctest --output-on-failure -j $(JOBS)

fuzz: setup
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

# ---- pipelines ---------------------------------------------------------------------------
# make pipeline MODEL=DIR CALIB=FILE [PPL=FILE] [GSM8K=FILE] [OUT=DIR] [METHODS="fp8 int8-sq awq gptq"] [BENCH=1] [LEAN=1]
# calibrates once, quantizes with each method, evaluates the BF16 model and every output, and
# compares them in $(OUT)/report.md (`llmq report`). BENCH=1 (a GPU machine) adds the runner's
# benchmark to every eval (BENCH_FLAGS="--bench --batches 1,8,32" etc. to choose); evals already
# made are kept, so delete the *.eval.json files (or use make -B) after changing it.
# Every step is a file target: re-running redoes only what is missing or out of date, and
# `make -j` runs the quantizers side by side (each writes only its own directory).
# LEAN=1, for a box with little scratch disk (an 8B model: 16 GB, its calibration file with
# Hessians 33 GB, each checkpoint 5-9 GB, so all four outputs do not fit 64 GB): each method is
# quantized, evaluated and its checkpoint deleted in one step, one method at a time, and the
# calibration file has no Hessians, so the disk holds the model, a small calibration file and
# one checkpoint; the eval records and the quantizer's llmq_report.json (as
# METHOD.quantize.json) stay, and the report needs no more.
MODEL ?=
CALIB ?=
PPL ?= $(CALIB)
GSM8K ?=
GSM8K_LIMIT ?= 0
OUT ?= out/$(notdir $(patsubst %/,%,$(MODEL)))
METHODS ?= fp8 int8-sq awq gptq
SAMPLES ?= 128
SEQ_LEN ?= 512
EVAL_SEQ_LEN ?= 512
BENCH ?=
BENCH_FLAGS ?= --bench
LEAN ?=
# Extra `llmq calibrate` flags. LEAN=1 adds --no-hessian: none of the pipeline's methods reads
# the file's Hessians (sequential GPTQ accumulates its own; only --no-sequential and the RTN
# methods' output-error report do), and at 8B they are 33 GB of the file.
CALIB_FLAGS ?= $(if $(filter 1,$(LEAN)),--no-hessian)
EVAL_FLAGS = --ppl $(PPL) --seq-len $(EVAL_SEQ_LEN) $(if $(GSM8K),--gsm8k $(GSM8K) --limit $(GSM8K_LIMIT)) \
  $(if $(filter 1,$(BENCH)),$(BENCH_FLAGS))
EVALS = $(OUT)/bf16.eval.json $(foreach m,$(METHODS),$(OUT)/$(m).eval.json)

pipeline: $(OUT)/report.md
	@echo "report: $(OUT)/report.md"

# One writer for the report files, after every eval (so -j cannot race on them).
$(OUT)/report.md: $(EVALS)
	$(LLMQ) report --out $(OUT) --force $(EVALS)

$(OUT)/calib.safetensors: $(MODEL)/config.json $(CALIB)
	@mkdir -p $(OUT)
	$(LLMQ) calibrate --model $(MODEL) --dataset $(CALIB) --samples $(SAMPLES) --seq-len $(SEQ_LEN) $(CALIB_FLAGS) \
	  --out $@ --force

# A quantized checkpoint appears complete or not at all, so its config.json marks it done.
$(OUT)/%/config.json: $(OUT)/calib.safetensors $(MODEL)/config.json
	$(LLMQ) quantize --model $(MODEL) --method $* --calib $< --out $(OUT)/$* --force

$(OUT)/bf16.eval.json: $(MODEL)/config.json $(PPL)
	@mkdir -p $(OUT)
	$(LLMQ) eval --model $(MODEL) $(EVAL_FLAGS) --json $@ --force

ifeq ($(LEAN),1)
.NOTPARALLEL:
$(OUT)/%.eval.json: $(OUT)/calib.safetensors $(MODEL)/config.json $(PPL)
	$(LLMQ) quantize --model $(MODEL) --method $* --calib $< --out $(OUT)/$* --force
	$(LLMQ) eval --model $(OUT)/$* $(EVAL_FLAGS) --json $@.tmp --force
	cp $(OUT)/$*/llmq_report.json $(OUT)/$*.quantize.json
	rm -rf $(OUT)/$*
	mv $@.tmp $@
else
$(OUT)/%.eval.json: $(OUT)/%/config.json $(PPL)
	$(LLMQ) eval --model $(OUT)/$* $(EVAL_FLAGS) --json $@ --force
endif

.PRECIOUS: $(OUT)/calib.safetensors $(OUT)/%/config.json

$(DEMO)/tiny-bf16/config.json:
	@mkdir -p $(DEMO)
	$(LLMQ) synth --config tiny --seed 1 --out $(DEMO)/tiny-bf16 --force

# The main job on an embedded default: a synthetic model, calibrated on the bundled text,
# quantized to all four formats and evaluated.
demo: build
	$(MAKE) --no-print-directory $(DEMO)/tiny-bf16/config.json
	$(LLMQ) inspect $(DEMO)/tiny-bf16
	$(MAKE) --no-print-directory pipeline MODEL=$(DEMO)/tiny-bf16 CALIB=examples/demo_text.txt \
	  OUT=$(DEMO)/out SAMPLES=16 SEQ_LEN=128 EVAL_SEQ_LEN=256

clean:
	rm -rf $(BUILD) $(DEMO)
