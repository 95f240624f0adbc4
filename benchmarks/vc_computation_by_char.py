"""VCRNN on char-LM: where the computation goes, by the kind of character read.

The paper (Jernite et al.) reports computation peaking at word boundaries. For each run
directory this evaluates the whole test split as the trainer does (eval mode, the hard mask,
state carried from batch to batch) and averages d_t/D, the fraction of dimensions updated at
the step that reads character t, over classes of that character: space, newline, punctuation,
the first letter of a word (after a space or newline), another letter, other. Writes one CSV
row per run and class and prints a table.

    python benchmarks/vc_computation_by_char.py RUN_DIR [RUN_DIR ...] --out FILE.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict

import torch

from adaptrnn.plot import CHAR_CLASSES, char_class
from adaptrnn.runs import load_run

FIELDS = ("run_dir", "checkpoint", "class", "characters", "mean_updates", "mean_scheduler")


def by_class(run_dir: str, checkpoint: str | None, batch_size: int | None) -> list[dict]:
    model, task, config, device, folder = load_run(run_dir, "cpu", checkpoint)
    batch_size = batch_size or config.eval_batch_size
    if not hasattr(task, "vocab"):
        raise SystemExit(f"{run_dir}: not a char-lm run")
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # characters, d_t/D, m_t
    state, previous = None, [""] * batch_size
    with torch.no_grad():
        for batch in task.eval_batches("test", batch_size):
            pred, stats, state = model(batch.x, batch.lengths, state if batch.carry_state else None)
            if "scheduler" not in stats.extras:
                raise SystemExit(f"{run_dir}: not a VCRNN run (no scheduler)")
            updates, scheduler = stats.updates.tolist(), stats.extras["scheduler"].tolist()  # (B, T)
            for row, codes in enumerate(batch.x.tolist()):
                for t, code in enumerate(codes):
                    ch = task.vocab[code]
                    acc = sums[char_class(ch, previous[row])]
                    acc[0] += 1
                    acc[1] += updates[row][t]
                    acc[2] += scheduler[row][t]
                    previous[row] = ch
    return [
        {
            "run_dir": run_dir,
            "checkpoint": folder.name,
            "class": name,
            "characters": int(sums[name][0]),
            "mean_updates": sums[name][1] / sums[name][0],
            "mean_scheduler": sums[name][2] / sums[name][0],
        }
        for name in CHAR_CLASSES
        if sums[name][0]
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--checkpoint", choices=("best", "last"), default=None, help="default: best, else last")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run's eval_batch_size")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [row for run in args.runs for row in by_class(run, args.checkpoint, args.batch_size)]
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    for r in rows:
        print(
            f"{r['run_dir']} [{r['checkpoint']}] {r['class']:>12}: "
            f"{r['characters']:7d} chars, d/D {r['mean_updates']:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
