# llmq: build, test tiers and pipelines. `make demo` runs the whole job on a synthetic model;
# `make test` runs the CPU test suite.
BUILD ?= build
JOBS ?= $(shell nproc)
LLMQ := $(BUILD)/bin/llmq
DEMO ?= demo

.PHONY: all setup configure build test test-gpu fuzz demo clean

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

# The main job on an embedded default: a synthetic model, then evaluation.
demo: build
	mkdir -p $(DEMO)
	$(LLMQ) synth --config tiny --seed 1 --out $(DEMO)/tiny-bf16 --force
	$(LLMQ) inspect $(DEMO)/tiny-bf16
	$(LLMQ) eval --model $(DEMO)/tiny-bf16 --ppl examples/demo_text.txt --seq-len 256 \
	  --json $(DEMO)/tiny-bf16.ppl.json --force

clean:
	rm -rf $(BUILD) $(DEMO)
