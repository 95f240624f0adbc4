"""Run the two-process DDP paths many times and count hangs, failures and orphaned workers.

Not part of CI (a run takes minutes). Each attempt runs under a wall-clock limit; an attempt that
outlives it counts as a hang and is killed with everything it started, and any process it left
behind counts as an orphan (and is killed too).

    python benchmarks/ddp_exit_repeat.py --runs 50                      # both kinds, 50 each
    python benchmarks/ddp_exit_repeat.py --runs 20 --kinds torchrun --timeout 120

Measured output: benchmarks/results/ddp_exit_repeat.txt.

Kinds:
    test      ``pytest tests/test_train.py -k ddp`` (the DDP test of the suite);
    torchrun  ``torchrun --standalone --nproc_per_node 2 -m adaptrnn.cli train`` on a tiny
              adding run, which must exit 0 and write result.json;
    stress    two processes that leave in-flight all_gathers whose Python tensors only gloo's
              threads still hold, then close the group with ``adaptrnn.distributed``: the shape
              of the exit deadlock, without the trainer around it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ["hidden_size=12", "batch_size=32", "eval_batch_size=64", "log_every=2", "eval_every=3", "lr=1e-2",
        "length=12", "val_size=64", "test_size=64"]  # fmt: skip
TERM_GRACE_S = 40  # torchrun gives its workers 30 s after SIGTERM before it kills them

STRESS = """
import os, sys
import torch, torch.distributed as dist, torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

def worker(rank, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    from adaptrnn.distributed import close_group, init_group
    init_group(torch.device("cpu"))
    ddp = DistributedDataParallel(torch.nn.Linear(4, 4))
    ddp(torch.randn(2, 4)).sum().backward()
    for _ in range(20):  # outputs dropped by Python at once: gloo's thread frees them, with the GIL
        outputs = [torch.empty(1000) for _ in range(2)]
        work = dist.all_gather(outputs, torch.randn(1000), async_op=True)
        del outputs, work
    holder = [ddp]
    del ddp
    close_group(holder.clear, True)

if __name__ == "__main__":
    mp.start_processes(worker, args=(int(sys.argv[1]),), nprocs=2, start_method="spawn")
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(kind: str, scratch: Path) -> list[str]:
    if kind == "test":
        return [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(ROOT / "tests/test_train.py"),
                "-k", "ddp"]  # fmt: skip
    if kind == "torchrun":
        sets = [arg for item in TINY for arg in ("--set", item)]
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "adaptrnn.cli", "train", "--task", "adding", "--model", "skip-lstm", "--steps", "6",
                "--device", "cpu", *sets, "--no-progress", "--out", str(scratch / "run")]  # fmt: skip
    script = scratch / "stress.py"
    script.write_text(STRESS)
    return [sys.executable, str(script), str(free_port())]


def leftovers(session: int, marker: str) -> list[int]:
    """Processes of the attempt still alive: in its session, or naming its scratch folder (torchrun
    starts each worker in a session of its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        state, sid = fields[0], int(fields[3])
        if state != "Z" and (sid == session or marker in cmdline):
            found.append(int(entry.name))
    return found


def attempt(kind: str, timeout: float) -> tuple[str, float, int]:
    """(outcome, seconds, orphans) of one attempt; outcome is ok, fail or hang."""
    with tempfile.TemporaryDirectory(prefix=f"ddp-{kind}-") as tmp:
        scratch = Path(tmp)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
        start = time.monotonic()
        proc = subprocess.Popen(
            command(kind, scratch), cwd=ROOT, env=env, start_new_session=True,
            stdout=open(scratch / "out.log", "wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            proc.wait(timeout=timeout)
            outcome = "ok" if proc.returncode == 0 else "fail"
        except subprocess.TimeoutExpired:
            outcome = "hang"
            os.killpg(proc.pid, signal.SIGTERM)  # torchrun forwards SIGTERM to its workers
            try:
                proc.wait(timeout=TERM_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        seconds = time.monotonic() - start
        if outcome == "ok" and kind == "torchrun" and not (scratch / "run" / "result.json").is_file():
            outcome = "fail"
        time.sleep(0.5)  # let exiting workers finish
        orphans = leftovers(proc.pid, str(scratch))
        for pid in orphans:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if outcome != "ok":
            tail = (scratch / "out.log").read_text(errors="replace").strip().splitlines()[-5:]
            print(f"  {kind}: {outcome} after {seconds:.0f} s; log tail: " + " | ".join(tail), flush=True)
        return outcome, seconds, len(orphans)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="attempts per kind")
    parser.add_argument("--kinds", default="test,torchrun", help="comma-separated: test, torchrun, stress")
    parser.add_argument("--timeout", type=float, default=300, help="seconds before an attempt counts as a hang")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    counts = {k: {"ok": 0, "fail": 0, "hang": 0, "orphans": 0, "seconds": 0.0} for k in kinds}
    for i in range(args.runs):
        for kind in kinds:
            outcome, seconds, orphans = attempt(kind, args.timeout)
            c = counts[kind]
            c[outcome] += 1
            c["orphans"] += orphans
            c["seconds"] = max(c["seconds"], seconds)
            print(f"run {i + 1}/{args.runs} {kind}: {outcome} ({seconds:.1f} s, {orphans} orphans)", flush=True)
    print("\nkind      ok  fail  hang  orphans  slowest_s")
    for kind, c in counts.items():
        print(f"{kind:8} {c['ok']:3} {c['fail']:5} {c['hang']:5} {c['orphans']:8} {c['seconds']:10.1f}")
    bad = sum(c["fail"] + c["hang"] + c["orphans"] for c in counts.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
