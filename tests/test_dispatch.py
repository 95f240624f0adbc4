"""The one-way structure: methods know only their reference loops; fast paths register with
``adaptrnn.dispatch``, which ``forward`` asks."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

import adaptrnn as ar
from adaptrnn import dispatch

I, D, T, B = 3, 8, 16, 5
DTYPE = torch.float64


def test_methods_do_not_import_the_fast_paths():
    """Dependencies run one way: ``adaptrnn.methods`` never imports ``adaptrnn.fast`` (``adaptrnn.dispatch``)."""
    files = list((Path(ar.__file__).parent / "methods").glob("*.py"))
    assert len(files) >= 5
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                names = [target] + [f"{target}.{a.name}" for a in node.names]
                assert not any(n.startswith(("..fast", "adaptrnn.fast")) for n in names), (path.name, target)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("adaptrnn.fast") for a in node.names), path.name


def test_a_subclass_with_its_own_loop_runs_it():
    """A subclass that overrides ``_forward`` is a different method: no registered fast path is taken."""

    class Louder(ar.SkipRNN):
        def _forward(self, x, state, valid):
            out, final, stats = super()._forward(x, state, valid)
            return out * 2, final, stats

    torch.manual_seed(3)
    m = Louder("gru", I, D).to(DTYPE).eval()
    x = torch.randn(T, B, I, dtype=DTYPE)
    plain = ar.SkipRNN("gru", I, D).to(DTYPE).eval()
    plain.load_state_dict(m.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], 2 * plain(x)[0])


def test_every_adaptive_method_has_a_registered_path():
    assert set(dispatch.PATHS) == {ar.SkipRNN, ar.VCRNN, ar.SARNN, ar.ACTRNN}
    assert dispatch.fast_path(ar.DenseRNN("lstm", I, D)) is None
