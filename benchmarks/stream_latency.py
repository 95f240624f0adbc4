"""Per-step latency of ``adaptrnn.fast.stream.Stream`` at batch 1 (LSTM, I=40, H=256, 1000 steps),
and of the Skip RNN fast path fed by a ``features`` callable, against ``torch.nn.LSTM`` on the
whole sequence and called once per step. ``PYTHONPATH=src python benchmarks/stream_latency.py [threads]``.

Skip RNN's gate is set as in ``adaptrnn bench`` (one update every 1/f steps).
"""

import sys

import torch

import adaptrnn as ar
from adaptrnn import bench
from adaptrnn.fast.skip import skip_inference
from adaptrnn.fast.stream import Stream

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
T, I, H = 1000, 40, 256


def median_ms(fn, repeats=7):
    return bench.timed(fn, False, torch.device("cpu"), repeats, warmup=1)


def stream_all(module, x):
    stream = Stream(module)
    for t in range(T):
        stream.step(x[t, 0] if stream.needs_input() else None)


torch.manual_seed(0)
x = torch.randn(T, 1, I)
lstm = torch.nn.LSTM(I, H)
with torch.no_grad():
    base = median_ms(lambda: lstm(x))
    print(f"torch.nn.LSTM whole sequence: {base:.1f} ms ({base / T * 1e3:.1f} us/step)")

    def nn_stream():
        state = None
        for t in range(T):
            _, state = lstm(x[t : t + 1], state)

    ms = median_ms(nn_stream)
    print(f"torch.nn.LSTM one call per step: {ms:.1f} ms ({ms / T * 1e3:.1f} us/step, {ms / base:.2f}x)")
    dense = ar.DenseRNN("lstm", I, H).eval()
    ms = median_ms(lambda: stream_all(dense, x))
    print(f"Stream(DenseRNN): {ms:.1f} ms ({ms / T * 1e3:.1f} us/step, {ms / base:.2f}x)")
    for fraction in (1.0, 0.5, 0.2, 0.1):
        skip = ar.SkipRNN("lstm", I, H).eval()
        bench.controlled(skip, fraction, 1, x)
        ms = median_ms(lambda m=skip: stream_all(m, x))
        fed = median_ms(lambda m=skip: skip_inference(m, lambda steps, rows: x[steps, rows], T, 1))
        print(f"f={fraction}: Stream(SkipRNN) {ms:.1f} ms ({ms / base:.2f}x); ", end="")
        print(f"features callable {fed:.1f} ms ({fed / base:.2f}x)")
