"""The fast inference paths (``adaptrnn.fast``) against the reference loops.

Every fast path must give the reference's outputs, final state and statistics (updates,
FLOPs, cost, extras) in eval mode under ``torch.no_grad()``, for the three cells, one and
two layers, with and without padding. Modules run in float64 so the comparisons are tight;
the gates are moved away from "always compute" so that skipping, partial updates, mixed
d_t and early halting all occur. No timing here: speed is measured by ``adaptrnn bench``.
"""

from __future__ import annotations

import copy
import csv

import numpy as np
import pytest
import torch

import adaptrnn as ar
from adaptrnn import bench, cli
from adaptrnn.fast import native
from adaptrnn.fast import sa as fast_sa
from adaptrnn.fast import skip as fast_skip
from adaptrnn.fast.stream import Stream
from adaptrnn.layer import RecurrentState
from conftest import vary_gates

CELLS = ("rnn", "gru", "lstm")
ADAPTIVE = ("skip", "act", "vc", "sa")
FAST_FUNCTIONS = {"skip": "skip.skip_forward", "act": "act.act_forward", "vc": "vc.vc_forward", "sa": "sa.sa_forward"}
DTYPE = torch.float64
I, D, T, B = 3, 8, 16, 5
LENGTHS = torch.tensor([T, 3, T - 5, 1, 9])
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def lively(method: str, cell: str, num_layers: int = 1, **options) -> ar.RecurrentBase:
    """An eval-mode float64 module whose gate varies over steps and rows."""
    m = ar.METHODS[method](cell, I, D, num_layers=num_layers, **options).to(DTYPE).eval()
    return vary_gates(m)


def reference_twin(module: ar.RecurrentBase) -> ar.RecurrentBase:
    twin = copy.deepcopy(module)
    twin.options["impl"] = "reference"
    return twin


def assert_same(got, want) -> None:
    """(out, state, stats) of two calls are equal to float64 tolerance."""
    (out, state, stats), (out_r, state_r, stats_r) = got, want
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)  # noqa: E731
    close(out, out_r)
    close(state.cell, state_r.cell)
    assert state.extras.keys() == state_r.extras.keys()
    for key in state.extras:
        close(state.extras[key], state_r.extras[key])
    close(stats.updates, stats_r.updates)
    close(stats.flops, stats_r.flops)
    close(stats.cost, stats_r.cost)
    assert stats.extras.keys() == stats_r.extras.keys()
    for key in stats.extras:
        close(stats.extras[key], stats_r.extras[key])


@pytest.fixture
def fast_calls(monkeypatch):
    """Counts the calls of every fast path, to check that the default really takes it."""
    calls = {name: 0 for name in FAST_FUNCTIONS}
    for name, target in FAST_FUNCTIONS.items():
        module_name, function = target.split(".")
        module = __import__(f"adaptrnn.fast.{module_name}", fromlist=[function])
        original = getattr(module, function)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, function, spy)
    return calls


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", ADAPTIVE)
def test_fast_path_equals_reference(method, cell, num_layers, padded, fast_calls, monkeypatch):
    monkeypatch.setattr(fast_sa, "GATHER_MIN_MACS", 0)  # tiny sizes: force SA's row gather
    torch.manual_seed(0)
    m = lively(method, cell, num_layers)
    x = torch.randn(T, B, I, dtype=DTYPE)
    lengths = LENGTHS if padded else None
    with torch.no_grad():
        got = m(x, lengths=lengths)
        want = reference_twin(m)(x, lengths=lengths)
    assert fast_calls[method] == 1
    assert_same(got, want)
    valid = torch.arange(T).unsqueeze(0) < (LENGTHS if padded else torch.full((B,), T)).unsqueeze(1)  # (B, T)
    updates = want[2].updates[valid]
    if method == "act":
        assert updates.max() > 1  # ponders more than once: the test means something
    else:
        assert updates.mean() < 0.9  # some computation was saved: the test means something


@pytest.mark.parametrize("method", ADAPTIVE)
@pytest.mark.parametrize("batch", [1, B])
def test_fast_path_continues_a_state_batch_first(method, batch):
    """From a given state (Skip: mid-period ũ and Δũ), batch_first, batch 1 and larger."""
    torch.manual_seed(1)
    m = lively(method, "lstm", 2, batch_first=True)
    x = torch.randn(batch, T, I, dtype=DTYPE)
    cell = torch.rand(2, batch, 2, D, dtype=DTYPE) * 2 - 1
    extras = m.initial_extras(batch, x)
    if method == "skip":
        extras = {"update_prob": torch.rand(batch, dtype=DTYPE) * 0.6, "delta_prob": torch.rand(batch, dtype=DTYPE)}
    state = RecurrentState(cell, extras)
    with torch.no_grad():
        assert_same(m(x, state), reference_twin(m)(x, state))


def test_batch_one_equals_the_rows_of_a_batch():
    """The batch-1 Skip loop and the batched loop make the same decisions."""
    torch.manual_seed(2)
    m = lively("skip", "gru", 2)
    x = torch.randn(T, B, I, dtype=DTYPE)
    with torch.no_grad():
        out, _, stats = m(x)
        for row in range(B):
            out_1, _, stats_1 = m(x[:, row : row + 1])
            torch.testing.assert_close(out_1[:, 0], out[:, row])
            torch.testing.assert_close(stats_1.updates[0], stats.updates[row])


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.9, 1.0])
def test_skip_thresholds(threshold):
    """The compute dial, including 1.0 where nothing updates (ũ ≤ 1, even the initial ũ = 1)."""
    torch.manual_seed(3)
    m = lively("skip", "lstm", threshold=threshold)
    x = torch.randn(T, B, I, dtype=DTYPE)
    with torch.no_grad():
        got, want = m(x), reference_twin(m)(x)
    assert_same(got, want)
    if threshold == 1.0:
        assert want[2].updates.eq(0).all()


@pytest.mark.parametrize("batch", [1, B])
def test_skip_features_are_requested_only_at_updates(batch):
    """The callable input is asked only for (step, row) pairs that update."""
    torch.manual_seed(4)
    m = lively("skip", "lstm", 2)
    x = torch.randn(T, batch, I, dtype=DTYPE)
    lengths = LENGTHS[:batch] if batch > 1 else None
    requested = []

    def features(steps, rows):
        requested.extend(zip(steps.tolist(), rows.tolist(), strict=True))
        return x[steps, rows]

    out, state, stats = fast_skip.skip_inference(m, features, T, batch, lengths=lengths)
    with torch.no_grad():
        want = reference_twin(m)(x, lengths=lengths)
    assert_same((out, state, stats), want)
    updated = {(t, b) for b, t in zip(*np.nonzero(want[2].updates.numpy()), strict=True)}
    assert len(requested) == len(set(requested)) == len(updated)
    assert set(requested) == updated
    assert len(updated) <= T * batch / 2  # many steps skipped: the test means something


def test_skip_inference_takes_a_tensor_and_layouts():
    torch.manual_seed(5)
    m = lively("skip", "rnn", batch_first=True)
    x = torch.randn(B, T, I, dtype=DTYPE)
    got = fast_skip.skip_inference(m, x, lengths=LENGTHS)
    with torch.no_grad():
        assert_same(got, reference_twin(m)(x, lengths=LENGTHS))
    with pytest.raises(ValueError, match="seq_len and batch"):
        fast_skip.skip_inference(m, lambda s, r: x[r, s])


@pytest.mark.parametrize("gather_min_macs", [0, fast_sa.GATHER_MIN_MACS], ids=["gather", "masked"])
def test_sa_extremes_no_neuron_and_every_neuron(gather_min_macs, monkeypatch):
    """Steps where no neuron updates, and where every neuron of some row does, both SA strategies."""
    monkeypatch.setattr(fast_sa, "GATHER_MIN_MACS", gather_min_macs)
    torch.manual_seed(6)
    for bias in (-5.0, 0.0, 5.0):
        m = lively("sa", "gru", 2)
        with torch.no_grad():
            m.update_bias_l0.fill_(bias)
            x = torch.randn(T, B, I, dtype=DTYPE)
            assert_same(m(x), reference_twin(m)(x))


@pytest.mark.parametrize("cell", CELLS)
def test_sa_union_changes_between_sets_of_one_size(cell):
    """The batched loop keeps the gathered weight columns while the union stays the same: here
    the union is set A, A again, then B (as many neurons, others), none, A, B, B: each step must
    use its own union's columns, as the reference does."""
    m = ar.METHODS["sa"](cell, 1, D).to(DTYPE).eval()
    half = torch.arange(D) < D // 2
    with torch.no_grad():  # ũ = clamp(0.5 + x w / 2, 0, 1): x = 1 opens A, -1 opens B, 0 none (ũ = 0.5)
        m.update_weight_hh_l0.zero_()
        m.update_weight_ih_l0.copy_(torch.where(half, 2.0, -2.0).unsqueeze(1).to(DTYPE))
        m.update_bias_l0.fill_(0.0)
        steps = torch.tensor([1.0, 1.0, -1.0, 0.0, 1.0, -1.0, -1.0], dtype=DTYPE)
        x = steps.view(-1, 1, 1).expand(-1, B, 1).contiguous()  # (T, B, 1)
        got, want = m(x), reference_twin(m)(x)
    assert_same(got, want)
    neurons = want[2].extras["neuron_updates"][0]  # (T, D)
    assert torch.equal(neurons[0].bool(), half) and torch.equal(neurons[2].bool(), ~half)
    assert neurons[3].sum() == 0


def test_act_rows_halt_at_different_steps_and_at_the_cap():
    torch.manual_seed(7)
    apart, capped = [], []
    for max_steps, bias in ((100, -1.0), (100, 0.0), (2, 3.5), (2, 4.0)):
        m = lively("act", "rnn", 2, max_steps=max_steps)
        x = torch.randn(T, B, I, dtype=DTYPE)
        with torch.no_grad():
            m.halting_weight.mul_(4.0)
            m.halting_bias.fill_(bias)
            got, want = m(x), reference_twin(m)(x)
        assert_same(got, want)
        steps = want[2].updates  # (B, T)
        apart.append(bool((steps.max(0).values > steps.min(0).values).any()))  # rows of a step halt apart
        capped.append(max_steps < 100 and bool((steps == max_steps).any()))
    assert any(apart) and any(capped)  # compaction and the cap were exercised


def test_impl_option(fast_calls):
    m = lively("vc", "gru")
    x = torch.randn(T, B, I, dtype=DTYPE)
    m(x)  # autograd on: the reference
    m.options["hard"] = False
    with torch.no_grad():
        m(x)  # soft mask: the reference
    assert fast_calls["vc"] == 0
    m.options["impl"] = "fast"
    with pytest.raises(ValueError, match="inference only"):
        m(x)
    m.options["hard"] = None
    with torch.no_grad():
        m(x)
    assert fast_calls["vc"] == 1
    m.options["impl"] = "bogus"
    with pytest.raises(ValueError, match="impl must be one of"):
        m(x)
    with torch.no_grad(), ar.full_computation(lively("skip", "rnn")) as full:
        assert full(x)[2].updates.eq(1).all()
    assert fast_calls["skip"] == 0


def test_random_skip_keeps_its_random_gate():
    """The random-skip baseline subclasses SkipRNN but must not take the deterministic jumps."""
    from adaptrnn.methods.skip import RandomSkipRNN

    m = RandomSkipRNN("gru", I, D).eval()
    with torch.no_grad():
        updates = m(torch.randn(400, 2, I))[2].updates
    assert 0.4 < float(updates.mean()) < 0.6


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", ("dense", *ADAPTIVE))
def test_stream_equals_whole_sequence(method, cell, num_layers):
    torch.manual_seed(8)
    m = lively(method, cell, num_layers) if method != "dense" else ar.DenseRNN(cell, I, D, num_layers).to(DTYPE).eval()
    x = torch.randn(T, 1, I, dtype=DTYPE)
    with torch.no_grad():
        out, state, stats = m(x)
    stream = Stream(m)
    for _ in range(2):  # the second pass checks reset()
        hs, updated, reads = [], [], 0
        for t in range(T):
            if stream.needs_input():
                reads += 1
                h, u = stream.step(x[t, 0])
            else:
                h, u = stream.step()
            hs.append(h)
            updated.append(u)
        torch.testing.assert_close(torch.stack(hs), out[:, 0])
        torch.testing.assert_close(torch.tensor(updated, dtype=DTYPE), stats.updates[0])
        torch.testing.assert_close(stream.state.cell, state.cell)
        for key in state.extras:
            torch.testing.assert_close(stream.state.extras[key], state.extras[key])
        assert reads == (int(stats.updates.sum()) if method == "skip" else T)
        stream.reset()


def test_stream_continues_from_a_state_and_checks_its_input():
    torch.manual_seed(9)
    m = lively("skip", "lstm")
    x = torch.randn(T, 1, I, dtype=DTYPE)
    with torch.no_grad():
        _, half, _ = m(x[: T // 2])
        out, _, _ = m(x[T // 2 :], half)
    stream = Stream(m, half)
    hs = [stream.step(x[t, 0] if stream.needs_input() else None)[0] for t in range(T // 2, T)]
    torch.testing.assert_close(torch.stack(hs), out[:, 0])
    stream.reset()
    with pytest.raises(ValueError, match="reads its input"):
        stream.step()
    with pytest.raises(ValueError, match="eval"):
        Stream(m.train())


needs_native = pytest.mark.skipif(native.library() is None, reason="no C compiler for the native loop")


@needs_native
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_native_batch_one_loop_equals_reference(cell, num_layers, bias, monkeypatch):
    """float32 at batch 1 runs the C loop (tensor input) or the C step (callable input, stream)."""
    torch.manual_seed(11)
    runs = []
    original = native.skip_run
    monkeypatch.setattr(native, "skip_run", lambda *a: runs.append(1) or original(*a))
    m = ar.SkipRNN(cell, I, 24, num_layers=num_layers, bias=bias).eval()
    with torch.no_grad():
        m.update_weight.mul_(4.0)
        m.update_bias.fill_(-0.8)
    x = torch.randn(3 * T, 1, I)
    with torch.no_grad():
        want = reference_twin(m)(x)
        got = m(x)
    on_demand = fast_skip.skip_inference(m, lambda steps, rows: x[steps, rows], 3 * T, 1)
    stream = Stream(m)
    streamed = torch.stack([stream.step(x[t, 0] if stream.needs_input() else None)[0] for t in range(3 * T)])
    assert runs == [1]
    for out, state, stats in (got, on_demand):
        torch.testing.assert_close(out, want[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state.cell, want[1].cell, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stats.updates, want[2].updates)
        torch.testing.assert_close(stats.extras["update_prob"], want[2].extras["update_prob"])
    torch.testing.assert_close(streamed, want[0][:, 0], rtol=1e-5, atol=1e-6)
    assert 0 < float(want[2].updates.mean()) < 0.8


def test_without_the_native_library_batch_one_runs_in_torch(monkeypatch):
    monkeypatch.setattr(native, "library", lambda: None)
    monkeypatch.setattr(native, "skip_run", lambda *a: pytest.fail("the native loop ran"))
    m = lively("skip", "lstm").float()
    x = torch.randn(T, 1, I)
    with torch.no_grad():
        got, want = m(x), reference_twin(m)(x)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[2].updates, want[2].updates)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_bench_controls_the_fraction(method):
    """The benchmark's gate settings give the computation they claim, on the fast path."""
    for fraction in (1.0, 0.5, 0.2):
        m = ar.METHODS[method]("lstm", I, 20).eval()
        x = torch.randn(40, 6, I)
        state = bench.controlled(m, fraction, 6, x)
        with torch.no_grad():
            updates = float(m(x, state)[2].updates.mean())
        want = 1 / fraction if method == "act" else fraction
        assert updates == pytest.approx(want, rel=0.05)


def test_bench_quick_writes_csv(tmp_path, capsys):
    out = tmp_path / "bench.csv"
    assert cli.main(["bench", "--quick", "--threads", "1", "--repeats", "1", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert set(bench.COLUMNS) == set(rows[0])
    paths = {(r["mode"], r["method"], r["path"]) for r in rows}
    assert ("infer", "dense", "torch.nn") in paths and ("train", "skip", "reference") in paths
    assert {("infer", m, "fast") for m in ADAPTIVE} <= paths
    assert all(float(r["median_ms"]) > 0 for r in rows)
    assert "ratio" not in capsys.readouterr().err


@cuda
@pytest.mark.parametrize("method", ADAPTIVE)
def test_fast_path_on_cuda_equals_reference_and_cpu(method):
    torch.manual_seed(10)
    m = lively(method, "lstm", 2)
    x = torch.randn(T, B, I, dtype=DTYPE)
    with torch.no_grad():
        cpu = m(x, lengths=LENGTHS)
        gpu_module = m.cuda()
        got = gpu_module(x.cuda(), lengths=LENGTHS.cuda())
        want = reference_twin(gpu_module)(x.cuda(), lengths=LENGTHS.cuda())
    assert_same(got, want)
    to_cpu = lambda r: (r[0].cpu(), RecurrentState(r[1].cell.cpu(), {k: v.cpu() for k, v in r[1].extras.items()}), r[2])  # noqa: E731
    out, state, stats = to_cpu(got)
    stats.updates, stats.flops, stats.cost = stats.updates.cpu(), stats.flops.cpu(), stats.cost.cpu()
    stats.extras = {k: v.cpu() for k, v in stats.extras.items()}
    assert_same((out, state, stats), cpu)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two tiny trained runs (Skip LSTM and dense GRU) on the adding task."""
    from adaptrnn.config import make_config
    from adaptrnn.train import train

    root = tmp_path_factory.mktemp("runs")
    sets = ["hidden_size=12", "batch_size=16", "eval_batch_size=64", "eval_every=3", "length=12"]
    sets += ["val_size=64", "test_size=64"]
    for model in ("skip-lstm", "gru"):
        config = make_config(overrides={"task": "adding", "model": model, "steps": 3, "device": "cpu"}, sets=sets)
        train(config, root / model, progress=False)
    return root


def test_dial_sweeps_the_knob_and_writes_csv_and_plot(tiny_runs, capsys):
    out = tiny_runs / "dial" / "skip.csv"
    argv = ["dial", "--run", str(tiny_runs / "skip-lstm"), "--values", "0.5,0.9,1.0", "--out", str(out)]
    assert cli.main([*argv, "--repeats", "1"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [float(r["knob_value"]) for r in rows] == [0.5, 0.9, 1.0] and rows[0]["knob"] == "threshold"
    updates = [float(r["updates_fraction"]) for r in rows]
    assert updates[0] >= updates[1] >= updates[2] == 0.0  # threshold 1: nothing updates
    assert all(float(r["ms_per_sequence"]) > 0 for r in rows)
    assert out.with_suffix(".png").stat().st_size > 0
    assert "threshold=0.9" in capsys.readouterr().out
    assert cli.main(["dial", "--run", str(tiny_runs / "gru")]) == 2  # a dense model has no knob
    assert "no compute knob" in capsys.readouterr().err
