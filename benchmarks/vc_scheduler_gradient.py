"""VCRNN: the gradient norm per parameter group against the soft mask's sharpness λ.

A trained VC run's weights (``checkpoints/best`` or ``last``) are held fixed; for each λ and
with or without ``detach_scheduler_state``, the same training batches (the run's own data, the
run's BPTT and batch size, state carried from batch to batch as in training) are run forward
and backward, and the L2 norm of each group's gradient (cell, gate = the scheduler, head) is
written, before any clipping. Nothing is trained.

Why: the campaign's VC-RNN char-LM run diverged as the trainer ramped λ (the scheduler's
gradient rose from 2.6-19.6 to 3.0e3 and 1.7e19 near λ = 5). The soft mask's slope in m_t is
about λD/4 at the active boundary, and m_t reads h_{t-1}, so the recurrent Jacobian gains a
term that grows with λ. If that path is the cause, the norms grow with λ with the gradient
through h_{t-1} and stay flat without it.

    python benchmarks/vc_scheduler_gradient.py RUN_DIR --out benchmarks/results/vc_scheduler_gradient.csv
"""

from __future__ import annotations

import argparse
import csv
import sys

import torch

from adaptrnn.model import set_schedule_values
from adaptrnn.runinfo import GROUPS, group_grad_norms, parameter_groups
from adaptrnn.runs import load_run

FIELDS = ("checkpoint", "sharpness", "detach_scheduler_state", "batch", "loss", *(f"grad_{g}" for g in GROUPS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--sharpness", default="1,2,3,4,5,6,8,10", help="comma-separated λ values")
    parser.add_argument("--batches", type=int, default=4, help="training batches per setting")
    parser.add_argument("--first-step", type=int, default=0, help="the training step whose batch comes first")
    parser.add_argument("--out", required=True, help="CSV to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, task, config, device, folder = load_run(args.run_dir, "cpu", args.checkpoint)
    model.train()  # the soft mask, as in training
    groups = parameter_groups(model)
    layers = [m for m in model.modules() if hasattr(m, "set_sharpness")]
    if not layers:
        raise SystemExit(f"{args.run_dir} is not a VCRNN run (no scheduler)")
    rows = []
    for sharpness in (float(v) for v in args.sharpness.split(",")):
        for detach in (False, True):
            set_schedule_values(model, sharpness=sharpness)
            for layer in layers:
                layer.options["detach_scheduler_state"] = detach
            state = None
            for i in range(args.batches):
                batch = task.train_batch(args.first_step + i, config.batch_size).to(device)
                pred, stats, new_state = model(batch.x, batch.lengths, state if batch.carry_state else None)
                loss = task.loss(pred, batch) + stats.cost
                model.zero_grad(set_to_none=True)
                loss.backward()
                norms = group_grad_norms(groups)
                state = new_state.detach()
                rows.append(
                    {
                        "checkpoint": folder.name,
                        "sharpness": sharpness,
                        "detach_scheduler_state": detach,
                        "batch": i,
                        "loss": float(loss.detach()),
                        **{f"grad_{g}": norms[g] for g in GROUPS},
                    }
                )
                r = rows[-1]
                print(
                    f"λ {sharpness:5.2f} detach {detach!s:5} batch {i}: loss {r['loss']:.4f} "
                    f"|g| cell {r['grad_cell']:.3g} gate {r['grad_gate']:.3g} head {r['grad_head']:.3g}",
                    flush=True,
                )
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
