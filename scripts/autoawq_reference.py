#!/usr/bin/env python3
"""AutoAWQ's own AWQ on tinystories-656k, for comparison with `llmq quantize --method awq`.

Needs a Python with torch, transformers 4.47.x and autoawq 0.2.7 (AutoAWQ's supported pair;
with transformers 5.x its block forwards misbehave). Not a dependency of llmq. Usage:
  python3 scripts/autoawq_reference.py MODEL_DIR CALIB_TEXT OUT_DIR
then `llmq eval --model OUT_DIR --ppl TEXT` (llmq reads AutoAWQ GEMM checkpoints).
Calibration as AutoAWQ does it: the text's paragraphs as samples (first 128), concatenated
and cut into 512-token blocks; group 128, zero point, GEMM packing.
"""
import json
import sys

import torch
from awq import AutoAWQForCausalLM
from transformers import AutoTokenizer

model_dir, calib_text, out = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoAWQForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, low_cpu_mem_usage=False)
samples = [p for p in open(calib_text).read().split("\n\n") if p.strip()]
model.quantize(tok, quant_config={"zero_point": True, "q_group_size": 128, "w_bit": 4, "version": "GEMM"},
               calib_data=samples, max_calib_samples=128, max_calib_seq_len=512)
model.save_quantized(out)
tok.save_pretrained(out)
print(json.dumps({"out": out, "samples": len(samples)}))
