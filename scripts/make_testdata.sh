#!/usr/bin/env bash
# Makes .testdata (git-ignored), the part of ../shared/data the GPU machine needs, for
# `carry`: the tiny models, goldens, GSM8K, the calibration and evaluation texts (ts60k = the
# first 60 000 bytes of TinyStories validation), and the PyTorch peer benchmark.
set -euo pipefail
DATA=${LLMQ_TEST_DATA:-../shared/data}
BENCH=${PEER_DIR:-$(dirname "$DATA")/bench}
rm -rf .testdata && mkdir -p .testdata/text
cp -r "$DATA/models" "$DATA/golden" "$DATA/gsm8k" "$DATA/README.md" .testdata/
cp "$DATA/text/calib_mixed.txt" "$DATA/text/tinystories_val.txt" "$DATA/text/wikitext2_test.txt" .testdata/text/
head -c 60000 "$DATA/text/tinystories_val.txt" > .testdata/text/ts60k.txt
cp "$BENCH/peer_torch.py" .testdata/
du -sh .testdata
