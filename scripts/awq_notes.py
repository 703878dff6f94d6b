#!/usr/bin/env python3
"""Prints each layer's AWQ scale choices (best ratio, RTN and best loss) from llmq_report.json
files, then (GPU path) the scale-search seconds per mapping summed over layers."""
import collections
import json
import sys

for path in sys.argv[1:]:
    report = json.load(open(path))
    print(path)
    seconds = collections.OrderedDict()
    for layer in report["layers"]:
        notes = layer["method"].get("scales", [])
        choices = " ".join(f"{s['mapping']}:{s['best_ratio']:+.2f}({s['loss_best'] / s['loss_rtn']:.3f})"
                           for s in notes)
        print(f"  layer {layer['layer']}: {choices}")
        for s in notes:
            if "seconds" in s:
                seconds[s["mapping"]] = seconds.get(s["mapping"], 0.0) + s["seconds"]
    if seconds:
        print("  search seconds: " + " ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
