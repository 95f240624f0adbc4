"""A/B timing of a method's reference training loop against an earlier revision of it.

    python benchmarks/train_loop_ab.py sa 1bfb018 [--threads 1] [--repeats 9]

Loads ``src/adaptrnn/methods/<method>.py`` as it was at the revision (``git show``), and times
forward + backward (``out.sum() + stats.cost``) of ``torch.nn.LSTM``, the old loop and the
current one in alternation at (B, T, I, H) = (256, 50, 2, 110), same weights and input, so that
a loaded machine's drift hits all three alike. Prints the medians of wall and CPU time
(``time.process_time``, less sensitive to waiting for a core) and their ratios to ``nn.LSTM``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import adaptrnn as ar

CLASSES = {"sa": "SARNN", "vc": "VCRNN", "skip": "SkipRNN", "act": "ACTRNN"}


def old_class(method: str, revision: str) -> type:
    source = subprocess.run(
        ["git", "show", f"{revision}:src/adaptrnn/methods/{method}.py"], capture_output=True, text=True, check=True
    ).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(f"adaptrnn.methods._{method}_at_{revision}", f.name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # relative imports resolve inside adaptrnn.methods
    os.unlink(f.name)
    return getattr(module, CLASSES[method])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("method", choices=sorted(CLASSES))
    parser.add_argument("revision")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    seq_len, batch, in_size, hidden = 50, 256, 2, 110
    x = torch.randn(seq_len, batch, in_size)
    lstm = torch.nn.LSTM(in_size, hidden)
    new = getattr(ar, CLASSES[args.method])("lstm", in_size, hidden, impl="reference").train()
    old = old_class(args.method, args.revision)("lstm", in_size, hidden, impl="reference").train()
    old.load_state_dict(new.state_dict())

    def loss(module):
        out, _, stats = module(x)
        return out.sum() + stats.cost

    calls = {"torch.nn.LSTM": lambda: lstm(x)[0].sum(), f"{args.method} at {args.revision}": lambda: loss(old)}
    calls[f"{args.method} now"] = lambda: loss(new)
    wall, cpu = {k: [] for k in calls}, {k: [] for k in calls}
    for call in calls.values():  # warm-up
        call().backward()
    for _ in range(args.repeats):
        for name, call in calls.items():
            c0, t0 = time.process_time(), time.perf_counter()
            call().backward()
            wall[name].append((time.perf_counter() - t0) * 1e3)
            cpu[name].append((time.process_time() - c0) * 1e3)
    print(f"threads {args.threads}, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    for label, times in (("wall", wall), ("cpu", cpu)):
        medians = {k: statistics.median(v) for k, v in times.items()}
        base = medians["torch.nn.LSTM"]
        print(f"{label}: " + ", ".join(f"{k} {v:.1f} ms ({v / base:.2f}x)" for k, v in medians.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
