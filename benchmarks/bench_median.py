"""Median and range, over repeated ``adaptrnn bench --out`` CSV files, of each fast path's ratio
to torch.nn: ``python benchmarks/results/bench_infer_runs_median.py FILE.csv ...``."""

import collections
import csv
import statistics
import sys

ratios = collections.defaultdict(list)
for path in sys.argv[1:]:
    for row in csv.DictReader(open(path)):
        if row["path"] == "fast":
            key = (int(row["threads"]), int(row["B"]), row["method"], float(row["target_fraction"]))
            ratios[key].append(float(row["ratio_to_torch_nn"]))
print(f"{'threads':>7} {'B':>4} {'method':6} {'f':>4}  median  range (of {len(sys.argv) - 1} runs)")
for key in sorted(ratios, key=lambda k: (k[0], -k[1], k[2], -k[3])):
    values = ratios[key]
    spread = f"{min(values):.2f}-{max(values):.2f}"
    print(f"{key[0]:>7} {key[1]:>4} {key[2]:6} {key[3]:>4}  {statistics.median(values):.2f}x  {spread}")
