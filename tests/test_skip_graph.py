"""Skip RNN's three straight-through gradient graphs (``SkipRNN(graph=...)``, METHODS.md §1).

Each graph is pinned, in float64, against an independent re-formulation written here with
``torch.nn`` cells run through ``functional_call`` on the module's own parameters, so that the
gradients of every parameter and of the input can be compared with ``torch.autograd``. The
official one is written in the official code's own state layout (Δũ and cum' carried, ũ
formed at the start of the next step), the other two step by step from eqs. 3-5.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.func import functional_call

import adaptrnn as ar
from adaptrnn.methods.skip import GRAPHS
from conftest import CELLS, DTYPE, TORCH_CELLS, B, D, I, T, make_module, random_input


def st_round(p: Tensor) -> Tensor:
    """round(p) forward, identity backward (the official ``_binary_round``); no ties in float64 here."""
    return p + (torch.round(p) - p).detach()


def candidate_stack(m: ar.SkipRNN, x_t: Tensor, state: list[tuple[Tensor, ...]]) -> list[tuple[Tensor, ...]]:
    """One step of every layer with ``nn.*Cell`` on the module's weights; state: per layer (h,) or (h, c)."""
    new, layer_in = [], x_t
    for layer, s in enumerate(state):
        in_size = m.input_size if layer == 0 else m.hidden_size
        cell = TORCH_CELLS[m.cell](in_size, m.hidden_size, dtype=DTYPE)
        params = {k: getattr(m, f"{k}_l{layer}") for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        if m.cell == "lstm":
            h, c = functional_call(cell, params, (layer_in, (s[0], s[1])))
            new.append((h, c))
        else:
            h = functional_call(cell, params, (layer_in, s[0]))
            new.append((h,))
        layer_in = h
    return new


def increment(m: ar.SkipRNN, state: list[tuple[Tensor, ...]]) -> Tensor:
    """σ(W_p s + b_p) from the top layer's c (LSTM) or h."""
    return torch.sigmoid(state[-1][-1] @ m.update_weight + m.update_bias)


def gate(u: Tensor, new: list[tuple[Tensor, ...]], old: list[tuple[Tensor, ...]]) -> list[tuple[Tensor, ...]]:
    """Eq. 3 for every part of every layer."""
    u = u.unsqueeze(1)
    return [tuple(u * a + (1 - u) * b for a, b in zip(n, o, strict=True)) for n, o in zip(new, old, strict=True)]


def initial(m: ar.SkipRNN, batch: int) -> list[tuple[Tensor, ...]]:
    parts = m.initial_cell.unsqueeze(1).expand(-1, batch, -1, -1)  # (L, B, K, D)
    return [tuple(parts[layer, :, k] for k in range(m.state_parts)) for layer in range(m.num_layers)]


def official(m: ar.SkipRNN, x: Tensor, binary_round=st_round) -> tuple[Tensor, Tensor]:
    """The official TF cell's recurrence: state (s, Δũ_prev, cum_prev), ũ formed at the step's start."""
    state = initial(m, x.shape[1])
    delta, cum_prev = x.new_ones(x.shape[1]), x.new_zeros(x.shape[1])
    outs, gates = [], []
    for x_t in x:
        cum = cum_prev + torch.minimum(delta, 1 - cum_prev)
        u = binary_round(cum)
        cand = candidate_stack(m, x_t, state)
        delta = u * increment(m, cand) + (1 - u) * delta  # from the candidate, carried when skipping
        cum_prev = u * 0.0 + (1 - u) * cum
        state = gate(u, cand, state)
        outs.append(state[-1][0])
        gates.append(u)
    return torch.stack(outs), torch.stack(gates)


def eq5(m: ar.SkipRNN, x: Tensor, carried: bool) -> tuple[Tensor, Tensor]:
    """Eqs. 3-5 as the paper writes them; ``carried``: Δũ kept while skipping, else eq. 4 at every step."""
    state = initial(m, x.shape[1])
    prob, delta = x.new_ones(x.shape[1]), x.new_ones(x.shape[1])
    outs, gates = [], []
    for x_t in x:
        u = st_round(prob)
        state = gate(u, candidate_stack(m, x_t, state), state)
        fresh = increment(m, state)  # eq. 4 from the gated state s_t
        delta = u * fresh + (1 - u) * delta if carried else fresh
        prob = u * delta + (1 - u) * (prob + torch.minimum(delta, 1 - prob))  # eq. 5
        outs.append(state[-1][0])
        gates.append(u)
    return torch.stack(outs), torch.stack(gates)


REFERENCES = {
    "official": official,
    "paper-carried": lambda m, x: eq5(m, x, carried=True),
    "paper": lambda m, x: eq5(m, x, carried=False),
}


def gradients(m: ar.SkipRNN, x: Tensor, run) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """A loss touching every output and the budget; returns outputs, gates and d loss / d (params, x)."""
    x = x.detach().requires_grad_(True)
    out, gates = run(m, x)
    weights = torch.linspace(-1, 1, out.numel(), dtype=DTYPE).view_as(out)
    loss = (out * weights).sum() + 0.3 * gates.sum()
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [dict(m.named_parameters())[n] for n in names] + [x])
    return out.detach(), gates.detach(), {**dict(zip(names, grads[:-1], strict=True)), "x": grads[-1]}


def lively_skip(cell: str, num_layers: int, graph: str, **options) -> ar.SkipRNN:
    torch.manual_seed(3)  # the same weights for every graph
    m = make_module("skip", cell, num_layers=num_layers, graph=graph, impl="reference", **options).train()
    with torch.no_grad():  # Δũ spread around 0.3: runs of one to a few skips between updates
        m.update_weight.normal_(0.0, 3.0)
        m.update_bias.fill_(-1.2)
    return m


def module_gradients(m: ar.SkipRNN, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """As ``gradients`` for the module itself: its budget term carries the gates' gradient."""
    x = x.detach().requires_grad_(True)
    out, _, stats = m(x)
    weights = torch.linspace(-1, 1, out.numel(), dtype=DTYPE).view_as(out)
    loss = (out * weights).sum() + stats.cost * x.shape[1]  # cost = 0.3 Σ u / B
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [dict(m.named_parameters())[n] for n in names] + [x])
    return out.detach(), stats.updates.t(), {**dict(zip(names, grads[:-1], strict=True)), "x": grads[-1]}


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("graph", GRAPHS)
def test_gradient_matches_independent_formulation(graph: str, cell: str, num_layers: int) -> None:
    m = lively_skip(cell, num_layers, graph, budget=0.3)
    x = random_input(B, 3 * T)
    out, gates, got = module_gradients(m, x)
    ref_out, ref_gates, want = gradients(m, x, REFERENCES[graph])
    assert torch.allclose(out, ref_out, atol=1e-12, rtol=0)
    assert torch.equal(gates, ref_gates)
    assert 0.1 < gates.mean() < 0.9, "both skips and updates: the graphs differ only where they mix"
    for name, value in want.items():
        assert torch.allclose(got[name], value, atol=1e-10, rtol=1e-8), f"{graph} {cell}: d loss / d {name}"


@pytest.mark.parametrize("cell", CELLS)
def test_graphs_share_the_forward_pass_but_not_the_gradient(cell: str) -> None:
    x, lengths = random_input(B, 3 * T), torch.tensor([3 * T, 5, 2 * T, 1])
    results = {}
    for graph in GRAPHS:
        m = lively_skip(cell, 2, graph, budget=0.3)
        out, state, stats = m(x, lengths=lengths)
        results[graph] = (out, state, stats, module_gradients(m, x)[2])
    out, state, stats, grads = results["official"]
    for graph in GRAPHS[1:]:
        o, s, st, g = results[graph]
        assert torch.equal(o, out) and torch.equal(s.cell, state.cell)
        for k in state.extras:
            assert torch.equal(s.extras[k], state.extras[k]), k
        assert torch.equal(st.updates, stats.updates) and torch.equal(st.cost, stats.cost)
        assert torch.equal(st.flops, stats.flops) and torch.equal(st.extras["update_prob"], stats.extras["update_prob"])
        # the gate's parameters learn differently: otherwise pinning three graphs would pin one
        diff = (g["update_weight"] - grads["update_weight"]).norm() / grads["update_weight"].norm()
        assert diff > 1e-3, f"{graph} and official give the same gate gradient"


def test_default_is_official_and_a_bad_graph_is_refused() -> None:
    assert ar.SkipRNN("gru", I, D).options["graph"] == "official"
    with pytest.raises(ValueError, match="SkipRNN: graph must be official, paper-carried or paper, got .ours."):
        ar.SkipRNN("gru", I, D, graph="ours")


@pytest.mark.parametrize("graph", GRAPHS)
def test_fast_inference_matches_each_graph(graph: str) -> None:
    """The jumping inference path serves every graph: their forward passes are one."""
    m = lively_skip("lstm", 2, graph)
    m.options["impl"] = "auto"
    x = random_input(B, 3 * T)
    m.eval()
    with torch.no_grad():  # a continued state too: the "paper" graph recomputes Δũ from it
        first = m(x[:T])
        fast = m(x[T:], state=first[1])
        m.options["impl"] = "reference"
        ref_first = m(x[:T])
        ref = m(x[T:], state=ref_first[1])
    assert torch.allclose(fast[0], ref[0], atol=1e-12, rtol=0)
    assert torch.equal(fast[2].updates, ref[2].updates)
    for k in ref[1].extras:
        assert torch.allclose(fast[1].extras[k], ref[1].extras[k], atol=1e-12, rtol=0), k


class ClampedRound(torch.autograd.Function):
    """round(p) forward; backward passes the incoming gradient clamped to [-c, c]."""

    @staticmethod
    def forward(ctx, p: Tensor, c: float) -> Tensor:
        ctx.c = c
        return torch.round(p)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad.clamp(-ctx.c, ctx.c), None


def gate_gradient_magnitudes(m: ar.SkipRNN, x: Tensor) -> Tensor:
    """|d loss / d u_t| of every gate decision in the official reference, unclamped."""
    seen = []

    def recording_round(p: Tensor) -> Tensor:
        u = st_round(p)
        if u.requires_grad:  # not the forced first update
            u.register_hook(lambda g: seen.append(g.abs()))
        return u

    gradients(m, x, lambda m, x: official(m, x, recording_round))
    return torch.cat(seen)


@pytest.mark.parametrize("cell", CELLS)
def test_gate_grad_clip_bounds_the_straight_through_gradient(cell: str) -> None:
    x = random_input(B, 3 * T)
    bound = float(gate_gradient_magnitudes(lively_skip(cell, 2, "official", budget=0.3), x).median())
    m = lively_skip(cell, 2, "official", budget=0.3, gate_grad_clip=bound)
    out, gates, got = module_gradients(m, x)
    ref_out, ref_gates, want = gradients(m, x, lambda m, x: official(m, x, lambda p: ClampedRound.apply(p, bound)))
    _, _, unclamped = module_gradients(lively_skip(cell, 2, "official", budget=0.3), x)
    assert torch.allclose(out, ref_out, atol=1e-12, rtol=0) and torch.equal(gates, ref_gates)
    for name, value in want.items():
        assert torch.allclose(got[name], value, atol=1e-10, rtol=1e-8), f"{cell}: d loss / d {name}"
    # the median bound binds on half the decisions, so the gate learns differently
    diff = (got["update_weight"] - unclamped["update_weight"]).norm() / unclamped["update_weight"].norm()
    assert diff > 1e-3


def test_gate_grad_clip_that_never_binds_changes_nothing() -> None:
    x = random_input(B, 3 * T)
    plain = module_gradients(lively_skip("lstm", 1, "official", budget=0.3), x)
    loose = module_gradients(lively_skip("lstm", 1, "official", budget=0.3, gate_grad_clip=1e30), x)
    assert torch.equal(plain[0], loose[0]) and torch.equal(plain[1], loose[1])
    for name, value in plain[2].items():
        assert torch.equal(loose[2][name], value), name


def test_bad_gate_grad_clip_is_refused() -> None:
    for bad in (0, -1.0, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="SkipRNN: gate_grad_clip must be None or a finite number > 0"):
            ar.SkipRNN("gru", I, D, gate_grad_clip=bad)
