"""Where a parity run's errors lie: the test sequence error by the number of non-zero entries.

Run: ``python benchmarks/parity_error_by_count.py RUN_DIR [RUN_DIR ...] [--checkpoint best|last]
[--bins 8]``. Each run's test split (the same sequences as its result.json) goes through the
checkpoint's model; the sequences are grouped by their count k of non-zero entries (bins of
``size / bins`` counts) and each group's error and mean ponder time are printed beside the whole
split's. A model that has learned parity up to some k and guesses beyond shows ~0% below that
k and ~50% above; one that is uniformly unsure shows the same error everywhere.
"""

from __future__ import annotations

import argparse

import torch

from adaptrnn.runs import load_run


def error_by_count(run: str, checkpoint: str | None, bins: int) -> None:
    model, task, config, device, folder = load_run(run, "cpu", checkpoint)
    counts, wrong, ponder = [], [], []
    with torch.no_grad():
        for batch in task.eval_batches("test", config.eval_batch_size):
            pred, stats, _ = model(batch.x, batch.lengths, None)
            counts.append((batch.x != 0).sum((1, 2)))  # (B,) non-zero entries per sequence
            wrong.append(((pred > 0) != (batch.y > 0.5)).flatten(1).any(1))
            ponder.append(stats.updates.mean(1))
    count, miss, steps = torch.cat(counts), torch.cat(wrong).float(), torch.cat(ponder)
    width = max(1, task.size // bins)
    print(f"{run} ({folder.name} checkpoint): test error {miss.mean():.2%}, ponder {steps.mean():.2f}, n = {len(miss)}")
    print("  non-zero entries   sequences   error    ponder")
    for lo in range(1, task.size + 1, width):
        hi = min(task.size, lo + width - 1)
        group = (count >= lo) & (count <= hi)
        if group.any():
            print(f"  {lo:>6}-{hi:<6}   {int(group.sum()):>9}   {miss[group].mean():6.1%}   {steps[group].mean():6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--checkpoint", choices=["best", "last"])
    parser.add_argument("--bins", type=int, default=8)
    args = parser.parse_args()
    for run in args.runs:
        error_by_count(run, args.checkpoint, args.bins)


if __name__ == "__main__":
    main()
