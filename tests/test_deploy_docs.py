"""docs/deploy.md's code runs as written on an exported Skip LSTM, and gives the model's outputs."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import adaptrnn as ar
from adaptrnn.export import export_step
from adaptrnn.model import SequenceModel

pytest.importorskip("onnxruntime")
DOC = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_deploy_page_examples_run(tmp_path, monkeypatch, capsys):
    assert len(BLOCKS) == 3  # stream, jump, TorchScript
    rnn = ar.SkipRNN("lstm", 2, 16, batch_first=True)
    with torch.no_grad():  # skip often enough that the jump example jumps
        rnn.update_weight.mul_(4.0)
        rnn.update_bias.fill_(-1.0)
    model = SequenceModel(rnn, 3, per_step=True).eval()
    export_step(model, tmp_path / "step.onnx", "onnx")
    export_step(model, tmp_path / "step.pt", "torchscript")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for index, block in enumerate(BLOCKS):
        exec(compile(block, f"deploy.md block {index}", "exec"), namespace)
        out = capsys.readouterr().out
        assert out.strip(), index  # every example prints what it shows
        if index == 0:  # the streamed output is the model's
            frames = torch.from_numpy(namespace["frames"]).transpose(0, 1)  # (1, T, I)
            with torch.no_grad():
                pred, stats, _ = model(frames)
            np.testing.assert_allclose(namespace["outputs"]["y"], pred[:, -1].numpy(), atol=2e-5)
            updates = int(stats.updates.sum())
            assert 0 < updates < frames.shape[1]
        if index == 1:  # one runtime call per update
            assert namespace["calls"] == updates, out
        if index == 2:
            np.testing.assert_allclose(namespace["outputs"]["y"].numpy(), pred[:, -1].numpy(), atol=2e-5)
