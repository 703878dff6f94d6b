#!/usr/bin/env python3
"""Prints each layer's AWQ scale choices (best ratio, RTN and best loss) from llmq_report.json files."""
import json
import sys

for path in sys.argv[1:]:
    report = json.load(open(path))
    print(path)
    for layer in report["layers"]:
        choices = " ".join(f"{s['mapping']}:{s['best_ratio']:+.2f}({s['loss_best'] / s['loss_rtn']:.3f})"
                           for s in layer["method"].get("scales", []))
        print(f"  layer {layer['layer']}: {choices}")
