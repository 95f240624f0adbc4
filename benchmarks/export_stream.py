"""Batch-1 streaming time per step of the exported step (ONNX Runtime, TorchScript) beside PyTorch.

For each cell and method the gates are fixed so the computation fraction f is known
(``adaptrnn.bench.controlled``: Skip updates once every 1/f steps, VC d_t = f·D, SA a fixed
f·D neurons, ACT N = 1/f ponder steps), the task model (a 12-way head, as a keyword spotter)
is exported with ``adaptrnn.export.onnx_bytes`` and ``script_step``, and a sequence of T
inputs is streamed one ``run`` call per step, the state fed back.

Runtimes: ``onnxruntime`` (the exported ONNX step, one intra-op thread, called every step),
``onnxruntime_jump`` (Skip RNN: called only at updates, jumping ``skips_ahead`` inputs),
``onnxruntime_nn_op`` (``torch.nn.LSTM/GRU/RNN`` + head exported as ONNX's own LSTM/GRU/RNN
operator: a second dense baseline), ``torchscript`` (the scripted step), ``pytorch``
(``adaptrnn.fast.stream.Stream``, the library's own streaming fast path). Ratios are to the
exported dense step of the same cell in the same runtime (ONNX Runtime for the first three).
Each step is timed on its own (the call, and feeding the state back); ``us_per_step`` is the
fastest of the repeats at each step, averaged over the steps (the machine is shared: this
keeps other jobs' preemptions out), ``median_us_per_step`` the same with the median.

    PYTHONPATH=src python benchmarks/export_stream.py [--hidden 256] [--input 40] [--steps 300] \
        [--cells lstm gru] [--out benchmarks/results/export_stream.csv]
"""

import argparse
import csv
import io
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import adaptrnn as ar
from adaptrnn import bench
from adaptrnn.export import initial_state, interface, onnx_bytes, script_step
from adaptrnn.fast.stream import Stream
from adaptrnn.model import SequenceModel

warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice
FRACTIONS = {
    "dense": (1.0,),
    "skip": (1.0, 0.5, 0.2, 0.1),
    "vc": (1.0, 0.5, 0.25),
    "sa": (1.0, 0.5, 0.2),
    "act": (1.0, 0.5),
}
OUTPUTS = 12


def per_step_times(fn, repeats: int) -> tuple[float, float, float]:
    """``fn() -> (quantity, seconds of each step (T,))``, called once to warm up, then ``repeats`` times.

    Returns the quantity and the per-step time: the fastest of the repeats at each step,
    averaged over the steps, and the same with the median. Timing each step (tens of
    microseconds) rather than the sequence keeps the other jobs' preemptions out of the
    fastest value: a step is rarely interrupted in every repeat.
    """
    seen, _ = fn()
    runs = np.stack([fn()[1] for _ in range(repeats)])  # (R, T)
    return seen, float(runs.min(0).mean()), float(np.median(runs, 0).mean())


def make_model(method: str, cell: str, fraction: float, size: tuple[int, int], x: torch.Tensor):
    """A task model with its gate fixed at ``fraction``; the start state for the exported step."""
    rnn = ar.METHODS[method](cell, size[0], size[1], batch_first=True).eval()
    start = bench.controlled(rnn, fraction, 1, x)
    model = SequenceModel(rnn, OUTPUTS, per_step=True).eval()
    state = {k: v.numpy() for k, v in initial_state(model).items()}
    if start is not None:
        state.update({k: v.numpy().astype(np.float32) for k, v in start.extras.items()})
    return model, state, start


def stream_with(run_step, outputs: list[str], names: dict[str, str], x: np.ndarray, state: dict):
    """One call per step, the state fed back; (mean of the ``updates`` output, seconds per step)."""
    updates, seconds = 0.0, np.zeros(x.shape[0])
    for t in range(x.shape[0]):
        start = time.perf_counter()
        result = dict(zip(outputs, run_step({"x": x[t], **state}), strict=True))
        state = {k: result[v] for k, v in names.items()}
        seconds[t] = time.perf_counter() - start
        updates += float(result["updates"][0])
    return updates / x.shape[0], seconds


def jump_with(session, outputs: list[str], x: np.ndarray, state: dict):
    """Skip RNN at batch 1: call the step only at updates, jumping ``skips_ahead`` inputs (which cost 0)."""
    t = calls = 0
    seconds = np.zeros(x.shape[0])
    while t < x.shape[0]:
        start = time.perf_counter()
        result = dict(zip(outputs, session.run(None, {"x": x[t], **state}), strict=True))
        state = {"cell": result["cell_next"], "update_prob": result["update_prob_ahead"]}
        state["delta_prob"] = result["delta_prob_next"]
        jump = max(int(result["skips_ahead"][0]), 0)  # -1: this step skipped, none looked ahead
        seconds[t] = time.perf_counter() - start
        calls += 1
        t += 1 + jump
    return calls / x.shape[0], seconds


def torch_nn_onnx(cell: str, size: tuple[int, int], threads: int):
    """``torch.nn.LSTM/GRU/RNN`` + the head, one step (T = 1), exported as the ONNX LSTM/GRU/RNN operator."""
    rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](size[0], size[1])
    head = torch.nn.Linear(size[1], OUTPUTS)

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = rnn, head

        def forward(self, x, *state):
            out, new = self.rnn(x.unsqueeze(0), state if cell == "lstm" else state[0])
            new = new if cell == "lstm" else (new,)
            return (self.head(out[0]), *new)

    names = ["h", "c"] if cell == "lstm" else ["h"]
    state = {n: np.zeros((1, 1, size[1]), np.float32) for n in names}
    buffer = io.BytesIO()
    args = (torch.zeros(1, size[0]), *(torch.from_numpy(v) for v in state.values()))
    torch.onnx.export(Step().eval(), args, buffer, dynamo=False, input_names=["x", *names],
                      output_names=["y", *(f"{n}_next" for n in names)])  # fmt: skip
    return session_of(buffer.getvalue(), threads), ["y", *(f"{n}_next" for n in names)], state


def session_of(data: bytes, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def measure(method, cell, fraction, size, steps, repeats, threads):
    torch.manual_seed(0)
    x = torch.randn(steps, 1, size[0])
    model, state, start = make_model(method, cell, fraction, size, x.transpose(0, 1))
    info = interface(model)
    xs = x.numpy()
    session = session_of(onnx_bytes(model), threads)
    scripted = script_step(model)

    def ts_step(feed):
        with torch.no_grad():
            return [t.numpy() for t in scripted(*(torch.from_numpy(np.asarray(v)) for v in feed.values()))]

    runs = {"onnxruntime": lambda feed: session.run(None, feed), "torchscript": ts_step}
    names = (info["outputs"], info["state"])
    rows = []
    for runtime, run_step in runs.items():
        rows.append((runtime, *per_step_times(lambda r=run_step: stream_with(r, *names, xs, state), repeats)))
    if method == "skip":
        rows.append(("onnxruntime_jump", *per_step_times(lambda: jump_with(session, names[0], xs, state), repeats)))
    if method == "dense":
        nn_session, nn_outputs, nn_state = torch_nn_onnx(cell, size, threads)
        nn_names = ([*nn_outputs, "updates"], {n: f"{n}_next" for n in nn_state})
        run_nn = lambda feed: [*nn_session.run(None, feed), np.ones(1)]  # noqa: E731 (updates = 1)
        rows.append(
            ("onnxruntime_nn_op", *per_step_times(lambda: stream_with(run_nn, *nn_names, xs, nn_state), repeats))
        )

    def pytorch_stream():
        stream, seconds = Stream(model.rnn, start), np.zeros(steps)
        with torch.no_grad():
            for t in range(steps):
                begin = time.perf_counter()
                h, _ = stream.step(x[t, 0] if stream.needs_input() else None)
                model.head(h)
                seconds[t] = time.perf_counter() - begin
        return rows[0][1], seconds

    rows.append(("pytorch", *per_step_times(pytorch_stream, repeats)))
    return [
        {"cell": cell, "method": method, "target_fraction": fraction, "updates": round(seen, 4), "runtime": runtime,
         "us_per_step": round(fastest * 1e6, 2), "median_us_per_step": round(median * 1e6, 2)}
        for runtime, seen, fastest, median in rows
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--input", type=int, default=40)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cells", nargs="+", default=["lstm"])
    parser.add_argument("--methods", nargs="+", default=list(FRACTIONS))
    parser.add_argument("--out", default="benchmarks/results/export_stream.csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = (args.input, args.hidden)
    rows = []
    for cell in args.cells:
        for method in args.methods:
            for fraction in FRACTIONS[method]:
                rows.extend(measure(method, cell, fraction, size, args.steps, args.repeats, args.threads))
    dense = {(r["cell"], r["runtime"]): r["us_per_step"] for r in rows if r["method"] == "dense"}
    for r in rows:
        r.update(I=args.input, H=args.hidden, T=args.steps, threads=args.threads)
        # the jump and torch.nn's ONNX operator are compared with the exported dense step in ONNX Runtime
        base = "onnxruntime" if r["runtime"].startswith("onnxruntime") else r["runtime"]
        r["ratio_to_dense"] = round(r["us_per_step"] / dense[r["cell"], base], 3)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    runtimes = ("onnxruntime", "onnxruntime_jump", "onnxruntime_nn_op", "torchscript", "pytorch")
    print(f"I={args.input} H={args.hidden} T={args.steps} batch 1, {args.threads} thread(s); us/step (ratio to dense)")
    print(f"{'cell':5} {'method':6} {'f':>5} {'updates':>7} " + " ".join(f"{r:>19}" for r in runtimes))
    for key in dict.fromkeys((r["cell"], r["method"], r["target_fraction"]) for r in rows):
        by = {r["runtime"]: r for r in rows if (r["cell"], r["method"], r["target_fraction"]) == key}
        cells = [
            f"{by[r]['us_per_step']:9.1f} ({by[r]['ratio_to_dense']:5.2f}x)" if r in by else " " * 19 for r in runtimes
        ]
        print(f"{key[0]:5} {key[1]:6} {key[2]:5g} {by['onnxruntime']['updates']:7.3f} " + " ".join(cells))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
