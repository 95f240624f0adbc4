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


def error_by_count(run: str, checkpoint: str | None, bins: int) -> dict:
    """The run's test error and ponder time, whole and by bins of the non-zero count k.

    Returns error, ponder, sequences, checkpoint (the folder's name) and groups: a list of
    (lo, hi, sequences, error, ponder) for k in [lo, hi], empty bins left out."""
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
    groups = []
    for lo in range(1, task.size + 1, width):
        hi = min(task.size, lo + width - 1)
        group = (count >= lo) & (count <= hi)
        if group.any():
            groups.append((lo, hi, int(group.sum()), float(miss[group].mean()), float(steps[group].mean())))
    return {
        "error": float(miss.mean()),
        "ponder": float(steps.mean()),
        "sequences": len(miss),
        "checkpoint": folder.name,
        "groups": groups,
    }


def print_table(run: str, result: dict) -> None:
    print(
        f"{run} ({result['checkpoint']} checkpoint): test error {result['error']:.2%}, "
        f"ponder {result['ponder']:.2f}, n = {result['sequences']}"
    )
    print("  non-zero entries   sequences   error    ponder")
    for lo, hi, n, error, ponder in result["groups"]:
        print(f"  {lo:>6}-{hi:<6}   {n:>9}   {error:6.1%}   {ponder:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--checkpoint", choices=["best", "last"])
    parser.add_argument("--bins", type=int, default=8)
    args = parser.parse_args()
    for run in args.runs:
        print_table(run, error_by_count(run, args.checkpoint, args.bins))


if __name__ == "__main__":
    main()
