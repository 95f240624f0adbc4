"""Batched fast inference against nn.LSTM, for A/B runs of two revisions on a loaded machine.

    python benchmarks/infer_ab.py [--threads 1] [--fractions 1,0.5] [--revision c996cf4]

At (B, T, I, H) = (256, 50, 2, 110), LSTM (``--cell``), each method with its gate fixed by
``adaptrnn.bench.controlled`` and ``nn.LSTM`` are called in alternation (9 each, after 2 warm-up
calls), and the ratios of the medians are printed, of wall clock and of process CPU time
(``time.process_time``, less sensitive to waiting for a core). With ``--revision`` the same
script runs in a child process on that revision's ``src`` (``git archive`` into a temporary
folder, the built native library copied in, put first on ``PYTHONPATH``); alternate the two
invocations so that the machine's drift hits both alike.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch


def run_at(revision: str, argv: list[str]) -> int:
    """This script with ``argv`` on the ``src`` of ``revision``."""
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
    root_dir = root.stdout.strip()
    with tempfile.TemporaryDirectory() as folder:
        archive = subprocess.run(["git", "archive", revision, "src"], capture_output=True, check=True, cwd=root_dir)
        subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True)
        for library in glob.glob(os.path.join(root_dir, "src/adaptrnn/fast/_native*.so")):
            shutil.copy(library, os.path.join(folder, "src/adaptrnn/fast"))
        env = {**os.environ, "PYTHONPATH": os.path.join(folder, "src")}
        print(f"revision {revision}: ", end="", flush=True)
        return subprocess.run([sys.executable, __file__, *argv], env=env).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--fractions", default="1")
    parser.add_argument("--methods", default="skip,vc,sa,act")
    parser.add_argument("--cell", default="lstm", choices=["rnn", "gru", "lstm"])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--revision", help="run on this git revision's src instead")
    args = parser.parse_args()
    if args.revision:
        argv = sys.argv[1:]
        at = argv.index("--revision")
        return run_at(args.revision, argv[:at] + argv[at + 2 :])

    import adaptrnn as ar
    from adaptrnn.bench import controlled

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch, seq_len, in_size, hidden = 256, 50, 2, 110
    x = torch.randn(seq_len, batch, in_size)
    lstm = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[args.cell](in_size, hidden)

    def once(fn) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - wall, time.process_time() - cpu

    rows = []
    with torch.no_grad():
        for method in args.methods.split(","):
            for fraction in (float(f) for f in args.fractions.split(",")):
                module = ar.METHODS[method](args.cell, in_size, hidden).eval()
                state = controlled(module, fraction, batch, x)
                for _ in range(2):
                    module(x, state), lstm(x)
                ours, base = [], []
                for _ in range(args.repeats):
                    ours.append(once(lambda m=module, s=state: m(x, s)))
                    base.append(once(lambda: lstm(x)))
                med = [statistics.median(t[i] for t in ours) / statistics.median(t[i] for t in base) for i in (0, 1)]
                ms = 1e3 * statistics.median(t[0] for t in base)
                rows.append(f"{method} f={fraction:g}: wall {med[0]:.2f}x cpu {med[1]:.2f}x (torch.nn {ms:.1f} ms)")
    print(f"{args.cell}, {args.threads} thread(s), {torch.__version__}: " + " | ".join(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
