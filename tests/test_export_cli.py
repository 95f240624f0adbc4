"""``adaptrnn export`` on a trained run: both formats reproduce the run's model; bad arguments are one line."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptrnn.cli import main
from adaptrnn.export import read_interface

ort = pytest.importorskip("onnxruntime")

TINY = [
    "--set", "hidden_size=8", "--set", "batch_size=16", "--set", "length=10", "--set", "val_size=32",
    "--set", "test_size=32", "--set", "eval_batch_size=32", "--set", "eval_every=2", "--set", "log_every=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    args = ["train", "--task", "adding", "--model", "skip-lstm", "--steps", "3", "--device", "cpu", *TINY]
    assert main([*args, "--set", "budget=0.1", "--no-progress", "--out", str(out)]) == 0
    return out


def one_line_error(capsys, code: int, *fragments: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("adaptrnn: error: "), err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_export_command_reproduces_the_run(run_dir, tmp_path, capsys, fmt, suffix):
    from adaptrnn.runs import load_run

    out = tmp_path / "sub" / f"step{suffix}"
    assert main(["export", "--run", str(run_dir), "--format", fmt, "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and out.is_file()
    info = read_interface(out)
    assert info["method"] == "skip" and info["cell"] == "lstm" and info["inputs"][0] == "x"

    model, task, _, _, _ = load_run(run_dir, device="cpu")
    batch = next(iter(task.eval_batches("test", 4)))
    with torch.no_grad():
        pred, stats, final = model(batch.x)  # the adding task's head reads the last step
    if fmt == "onnx":
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        run_step = lambda feed: session.run(None, feed)  # noqa: E731
    else:
        module = torch.jit.load(str(out))
        run_step = lambda feed: [t.numpy() for t in module(*(torch.from_numpy(v) for v in feed.values()))]  # noqa: E731
    state = {
        k: np.repeat(np.array(v, np.float32), 4, axis=1 if k == "cell" else 0) for k, v in info["initial_state"].items()
    }
    updates = []
    for t in range(batch.x.shape[1]):
        outputs = dict(zip(info["outputs"], run_step({"x": batch.x[:, t].numpy(), **state}), strict=True))
        state = {name: outputs[after] for name, after in info["state"].items()}
        updates.append(outputs["updates"])
    np.testing.assert_allclose(outputs["y"], pred.numpy(), atol=2e-5)
    np.testing.assert_allclose(state["cell"], final.cell.numpy(), atol=2e-5)
    np.testing.assert_array_equal(np.stack(updates, 1), stats.updates.numpy())


def test_export_errors_are_one_line(run_dir, tmp_path, capsys):
    out = str(tmp_path / "x.onnx")
    code = main(["export", "--run", str(tmp_path / "nope"), "--format", "onnx", "--out", out])
    one_line_error(capsys, code, "nope", "not found")

    code = main(["export", "--run", str(run_dir), "--format", "tflite", "--out", out])
    one_line_error(capsys, code, "--format", "tflite", "onnx", "torchscript")

    no_checkpoint = tmp_path / "fresh"
    no_checkpoint.mkdir()
    shutil.copy(run_dir / "config.yaml", no_checkpoint / "config.yaml")
    code = main(["export", "--run", str(no_checkpoint), "--format", "onnx", "--out", out])
    one_line_error(capsys, code, "no checkpoint")

    no_config = tmp_path / "empty"
    no_config.mkdir()
    code = main(["export", "--run", str(no_config), "--format", "torchscript", "--out", out])
    one_line_error(capsys, code, "not a run directory")

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    for name in ("best", "last"):
        (broken / "checkpoints" / name / "model.safetensors").write_bytes(b"garbage")
    code = main(["export", "--run", str(broken), "--format", "onnx", "--out", out])
    one_line_error(capsys, code, "model.safetensors")

    code = main(["export", "--run", str(run_dir), "--format", "onnx"])
    one_line_error(capsys, code, "--out")

    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main(["export", "--run", str(run_dir), "--format", "onnx", "--out", str(blocker / "step.onnx")])
    one_line_error(capsys, code, "cannot write")
    assert not Path(out).exists()
