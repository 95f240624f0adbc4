"""The exported streaming step (ONNX Runtime, TorchScript, eager) equals the PyTorch model step by step.

Every method and cell, two layers, float32, batch 1 (streaming) and batch 3 (a decision
per example). The reference is the task model called once over the whole sequence; the
exported step is called once per input with the state fed back.
"""

import numpy as np
import pytest
import torch

from adaptrnn.export import build_step, initial_state, interface, onnx_bytes, onnx_op_types, script_step
from adaptrnn.export.vc_blocks import BlockProduct
from adaptrnn.model import SequenceModel
from conftest import ADAPTIVE, CELLS, METHOD_NAMES, make_module

ort = pytest.importorskip("onnxruntime")

T_SEQ, OUTPUTS = 9, 2
ATOL = 2e-5
# The per-step extras of the reference's stats that the step returns, by method.
EXTRAS = {
    "skip": ("update_prob", "update_prob_t"),
    "act": ("remainder", "remainder"),
    "sa": ("neuron_updates", "neuron_mask"),
}


def make_model(method: str, cell: str, vocab: int | None = None, layers: int = 2, **options) -> SequenceModel:
    """A float32 task model with lively gates (conftest.make_module), 2 layers, a 2-wide head."""
    rnn = make_module(method, cell, num_layers=layers, batch_first=True, **options).float()
    if method == "skip":  # skip more often than conftest's setting, so that batch 1 skips too
        with torch.no_grad():
            rnn.update_bias.fill_(-1.0)
    if vocab is None:
        return SequenceModel(rnn, OUTPUTS, per_step=True).eval()
    return SequenceModel(rnn, OUTPUTS, per_step=True, vocab_size=vocab, embed_size=rnn.input_size).eval()


def reference(model: SequenceModel, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The model over the whole sequence: y (B, T, O), h (B, T, D), updates, extras, final state."""
    with torch.no_grad():
        embedded = model.embedding(x) if model.embedding is not None else x
        out, state, stats = model.rnn(embedded)
        result = {"y": model.head(out), "h": out, "updates": stats.updates, "cell_next": state.cell}
        result.update(stats.extras)
        result.update({f"{k}_next": v for k, v in state.extras.items()})
    return {k: v.numpy() for k, v in result.items()}


def stream(run_step, info: dict, x: np.ndarray, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Call ``run_step(inputs) -> outputs`` once per step; per-step outputs stacked on axis 1."""
    steps = []
    for t in range(x.shape[1]):
        outputs = dict(zip(info["outputs"], run_step({"x": x[:, t], **state}), strict=True))
        state = {name: outputs[after] for name, after in info["state"].items()}
        steps.append(outputs)
    result = {k: np.stack([s[k] for s in steps], axis=1) for k in steps[0] if not k.endswith("_next")}
    result["h"] = np.stack([s["cell_next"][-1, :, 0] for s in steps], axis=1)
    result.update({k: v for k, v in steps[-1].items() if k.endswith("_next")})
    return result


def torch_runner(module):
    def run(inputs):
        with torch.no_grad():
            return [o.numpy() for o in module(*(torch.from_numpy(np.asarray(v)) for v in inputs.values()))]

    return run


def onnx_runner(model: SequenceModel):
    session = ort.InferenceSession(onnx_bytes(model), providers=["CPUExecutionProvider"])
    return lambda inputs: session.run(None, inputs)


def check_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray], method: str) -> None:
    for name in ("y", "h", "updates", "cell_next"):
        np.testing.assert_allclose(got[name], want[name], atol=ATOL, rtol=1e-5, err_msg=name)
    if method in EXTRAS:
        ref_name, step_name = EXTRAS[method]
        np.testing.assert_allclose(got[step_name], want[ref_name], atol=ATOL, err_msg=step_name)
    if method == "skip":
        for name in ("update_prob_next", "delta_prob_next"):
            np.testing.assert_allclose(got[name], want[name], atol=ATOL, err_msg=name)
        # skips_ahead: at a step where the stack ran, the run of skipped steps that follows
        # (where it ends inside the sequence); -1 where every example skipped.
        u = want["updates"]
        ran = u.max(0) > 0  # (T,)
        for b, t in np.ndindex(u.shape):
            after = np.flatnonzero(u[b, t + 1 :])
            if not ran[t]:
                assert got["skips_ahead"][b, t] == -1
            elif len(after):
                assert got["skips_ahead"][b, t] == after[0], (b, t, got["skips_ahead"][b], u[b])
    if method == "vc":  # d_t of each layer, averaged, is the reference's update fraction
        np.testing.assert_allclose(got["active_dims"].mean(0).T / 5, want["updates"], atol=1e-6)  # (L, T, B) stacked


def initial(model: SequenceModel, batch: int) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in initial_state(model, batch).items()}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_exported_step_equals_model(method, cell, batch):
    model = make_model(method, cell)
    x = torch.randn(batch, T_SEQ, model.rnn.input_size)
    want = reference(model, x)
    info = interface(model)
    runners = {"eager": torch_runner(build_step(model)), "torchscript": torch_runner(script_step(model))}
    runners["onnxruntime"] = onnx_runner(model)
    for name, run_step in runners.items():
        got = stream(run_step, info, x.numpy(), initial(model, batch))
        try:
            check_equal(got, want, method)
        except AssertionError as err:
            raise AssertionError(f"{name}: {err}") from None
    if method == "act":  # the ponder loop ran more than once
        assert want["updates"].max() > 1, want["updates"]
    elif method != "dense":  # the decisions vary, so the saving paths were exercised
        assert want["updates"].min() < want["updates"].max(), want["updates"]


def jump_stream(run_step, info: dict, x: torch.Tensor, state: dict) -> tuple[np.ndarray, np.ndarray, int, dict]:
    """Batch 1: call the step only where the stack runs, jumping ``skips_ahead`` inputs.

    Returns the outputs y (1, T, O) (a jumped step repeats the last), the updates (1, T),
    the number of calls and the last call's outputs.
    """
    t, calls, ys, updates = 0, 0, [], []
    while t < x.shape[1]:
        out = dict(zip(info["outputs"], run_step({"x": x[:, t].numpy(), **state}), strict=True))
        calls += 1
        ahead = max(int(out["skips_ahead"][0]), 0)  # -1: this step skipped, nothing looked ahead
        jump = min(ahead, x.shape[1] - t - 1)
        ys += [out["y"]] * (1 + jump)
        updates += [out["updates"][0]] + [0.0] * jump
        # in the step's input order (the TorchScript runner passes them by position)
        state = {
            "cell": out["cell_next"],
            "update_prob": out["update_prob_ahead"],
            "delta_prob": out["delta_prob_next"],
        }
        t += 1 + jump
    return np.stack(ys, 1), np.array(updates)[None], calls, out


@pytest.mark.parametrize("cell", CELLS)
def test_skip_jump_over_skipped_steps_equals_model(cell):
    """Batch 1: call the step only where it updates, jumping skips_ahead inputs with update_prob_ahead."""
    model = make_model("skip", cell)
    x = torch.randn(1, 40, model.rnn.input_size)
    want = reference(model, x)
    info = interface(model)
    for run_step in (onnx_runner(model), torch_runner(script_step(model))):
        ys, updates, calls, out = jump_stream(run_step, info, x, initial(model, 1))
        np.testing.assert_allclose(ys, want["y"], atol=ATOL)
        np.testing.assert_array_equal(updates, want["updates"])
        np.testing.assert_allclose(out["cell_next"], want["cell_next"], atol=ATOL)
        assert calls == want["updates"].sum() < x.shape[1]  # one call per update


@pytest.mark.parametrize("threshold", [0.9, 1.0])
def test_skip_jump_at_high_thresholds(threshold):
    """At threshold 1 the gate never fires after the first steps: the look-ahead must not invent an update."""
    model = make_model("skip", "gru", threshold=threshold)
    x = torch.randn(1, 30, model.rnn.input_size)
    want = reference(model, x)
    ys, updates, _, out = jump_stream(onnx_runner(model), interface(model), x, initial(model, 1))
    np.testing.assert_allclose(ys, want["y"], atol=ATOL)
    np.testing.assert_array_equal(updates, want["updates"])
    np.testing.assert_allclose(out["cell_next"], want["cell_next"], atol=ATOL)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_one_layer_step_equals_model(method):
    model = make_model(method, "lstm", layers=1)
    x = torch.randn(1, T_SEQ, model.rnn.input_size)
    got = stream(onnx_runner(model), interface(model), x.numpy(), initial(model, 1))
    check_equal(got, reference(model, x), method)


def test_act_ponder_loop_stops_at_max_steps():
    model = make_model("act", "gru", max_steps=2)
    with torch.no_grad():
        model.rnn.halting_bias.fill_(-10.0)  # never halts by itself: N(t) = M = 2
    x = torch.randn(2, T_SEQ, model.rnn.input_size)
    want = reference(model, x)
    assert (want["updates"] == 2).all()
    for run_step in (onnx_runner(model), torch_runner(script_step(model))):
        check_equal(stream(run_step, interface(model), x.numpy(), initial(model, 2)), want, "act")


def test_token_model_step_equals_model():
    model = make_model("skip", "gru", vocab=11)
    x = torch.randint(0, 11, (2, T_SEQ))
    want = reference(model, x)
    got = stream(onnx_runner(model), interface(model), x.numpy(), initial(model, 2))
    check_equal(got, want, "skip")


def test_skip_state_continues_a_sequence_from_a_learned_initial_state():
    model = make_model("skip", "lstm")
    with torch.no_grad():
        model.rnn.initial_cell.uniform_(-0.5, 0.5)
    x = torch.randn(1, T_SEQ, model.rnn.input_size)
    got = stream(onnx_runner(model), interface(model), x.numpy(), initial(model, 1))
    check_equal(got, reference(model, x), "skip")


@pytest.mark.parametrize(
    "method, ops",
    [("skip", {"If"}), ("act", {"Loop"}), ("vc", {"Slice", "If"}), ("sa", {"NonZero", "Gather", "ScatterElements"})],
)
def test_onnx_graph_keeps_the_saving(method, ops):
    counts = onnx_op_types(onnx_bytes(make_model(method, "lstm")))
    assert ops <= set(counts), counts
    if method == "skip":  # the cell's matrix products run only inside the If branch; the head outside
        import onnx

        graph = onnx.load_from_string(onnx_bytes(make_model(method, "lstm"))).graph
        top = [n.op_type for n in graph.node]
        branches = [n.op_type for node in graph.node if node.op_type == "If" for a in node.attribute for n in a.g.node]
        assert top.count("Gemm") == 1, top  # the head
        assert branches.count("Gemm") == 4, branches  # W_ih and W_hh of two layers


def test_vc_extreme_blocks_in_one_file():
    """The same exported VC step at d_t = 1 and d_t = D (the smallest and the largest stored block)."""
    model = make_model("vc", "gru")
    info = interface(model)
    for bias in (-30.0, 30.0):  # m_t ≈ 0 -> d_t = 1; m_t ≈ 1 -> d_t = D
        with torch.no_grad():
            for k in range(2):
                getattr(model.rnn, f"scheduler_bias_l{k}").fill_(bias)
        x = torch.randn(1, 4, model.rnn.input_size)
        got = stream(onnx_runner(model), info, x.numpy(), initial(model, 1))
        assert set(np.unique(got["active_dims"]).tolist()) == ({1} if bias < 0 else {5})
        check_equal(got, reference(model, x), "vc")


@pytest.mark.parametrize("hidden", [5, 13])
def test_vc_block_product_every_width(hidden):
    """BlockProduct equals (e ⊙ h) W_hh^T + b_hh on the first d_t rows, for every d_t, eager and scripted."""
    gates = 4
    w_hh, b_hh = torch.randn(gates * hidden, hidden), torch.randn(gates * hidden)
    product = BlockProduct(w_hh, b_hh, gates, hidden)
    scripted = torch.jit.script(product)
    h = torch.randn(3, hidden)
    for top in range(1, hidden + 1):
        d = torch.tensor([top, max(1, top - 2), 1])  # the batch's largest d_t is top
        masked = h * (torch.arange(hidden) < d.unsqueeze(1))
        want = torch.nn.functional.linear(masked, w_hh, b_hh).reshape(3, gates, hidden)[:, :, :top]
        for module in (product, scripted):
            torch.testing.assert_close(module(masked, top), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_interface_describes_inputs_outputs_and_initial_state(method):
    model = make_model(method, "lstm")
    info = interface(model)
    assert info["method"] == method
    assert info["inputs"][:2] == ["x", "cell"] and info["outputs"][:2] == ["y", "cell_next"]
    assert np.array(info["initial_state"]["cell"]).shape == (2, 1, 2, 5)
    assert set(info["quantities"]) == set(info["outputs"][1 + len(info["state"]) :])
