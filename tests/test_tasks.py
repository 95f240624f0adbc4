"""Task data: labels re-derived from the inputs independently of the generators, determinism,
fixed evaluation sets, the IDX reader, the character LM and the registry's errors."""

from __future__ import annotations

import gzip
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adaptrnn.tasks import TASKS, make_task, read_idx
from adaptrnn.tasks.base import Batch

GENERATED = ["adding", "frequency", "parity", "logic", "addition", "sort", "copy"]


def small(name: str, seed: int = 0, **options):
    """A task with small evaluation sets so the tests stay fast."""
    return make_task(name, seed=seed, val_size=300, test_size=200, **options)


def same(a: Batch, b: Batch) -> bool:
    fields = ("x", "y", "lengths", "mask")
    return (
        all(
            (getattr(a, f) is None and getattr(b, f) is None) or torch.equal(getattr(a, f), getattr(b, f))
            for f in fields
        )
        and a.carry_state == b.carry_state
    )


def concat(batches: list[Batch]) -> Batch:
    cat = lambda f: None if getattr(batches[0], f) is None else torch.cat([getattr(b, f) for b in batches])  # noqa: E731
    return Batch(cat("x"), cat("y"), cat("lengths"), cat("mask"))


# ----------------------------------------------------------------------------- adding


def test_adding_markers_and_target():
    task = small("adding", length="50")
    b = task.train_batch(3, 512)
    assert b.x.shape == (512, 50, 2) and b.y.shape == (512, 1)
    values, markers = b.x[..., 0], b.x[..., 1]
    assert ((values >= -0.5) & (values <= 0.5)).all()
    assert set(markers.unique().tolist()) <= {0.0, 1.0}
    assert (markers.sum(dim=1) == 2).all()
    pos = markers.nonzero()[:, 1].view(512, 2)
    assert (pos[:, 0] < 5).all() and (pos[:, 1] >= 25).all()
    assert set(pos[:, 0].tolist()) == set(range(5))  # the whole first 10% is used
    expected = torch.tensor([values[i, pos[i]].sum().item() for i in range(512)])
    torch.testing.assert_close(b.y.squeeze(1), expected)
    assert task.target_variance == pytest.approx(1 / 6)
    assert b.y.var().item() == pytest.approx(1 / 6, rel=0.2)


def test_adding_mse_metric():
    task = small("adding")
    b = task.train_batch(0, 16)
    assert task.metric_parts(b.y.clone(), b) == (0.0, 16.0)
    num, den = task.metric_parts(b.y + 0.5, b)
    assert num / den == pytest.approx(0.25)
    assert task.loss(b.y + 0.5, b).item() == pytest.approx(0.25)  # plain MSE, not half


# ----------------------------------------------------------------------------- frequency


def estimate_period(x: torch.Tensor, dt: float) -> torch.Tensor:
    """Least-squares sinusoid fit over a fine grid of periods; x (N, T) -> best period (N,)."""
    t = torch.arange(x.shape[1], dtype=torch.float64) * dt
    periods = torch.logspace(math.log10(2.05 * dt), math.log10(150.0), 6000, dtype=torch.float64)
    phase = 2 * math.pi * t[None, :] / periods[:, None]  # (P, T)
    basis = torch.stack([phase.sin(), phase.cos()], dim=1)  # (P, 2, T)
    gram = basis @ basis.transpose(1, 2)  # (P, 2, 2)
    proj = torch.einsum("pkt,nt->npk", basis, x.double())  # (N, P, 2)
    explained = torch.einsum("npk,pkl,npl->np", proj, torch.linalg.inv(gram), proj)
    return periods[explained.argmax(dim=1)]


@pytest.mark.parametrize("dt", [1.0, 0.5])
def test_frequency_periods_from_the_signal(dt):
    task = small("frequency", sampling_period_ms=str(dt))
    b = task.train_batch(1, 64)
    assert b.x.shape == (64, int(100 / dt), 1)
    assert b.y.sum().item() == 32  # balanced
    est = estimate_period(b.x.squeeze(2), dt)
    inside = (est >= 4.95) & (est <= 6.05)
    assert torch.equal(inside, b.y.bool())
    phases = b.x[:, 0, 0]
    assert phases.std() > 0.3  # random phase shift, not always sin(0)


# ----------------------------------------------------------------------------- copy


def test_copy_layout():
    task = small("copy", num_symbols=8, copy_length=10, delay=100)
    b = task.train_batch(0, 32)
    T = 120
    assert b.x.shape == (32, T) and b.x.dtype == torch.long and task.input_size == 10
    assert ((b.x[:, :10] >= 1) & (b.x[:, :10] <= 8)).all()
    assert (b.x[:, 109] == 9).all()
    rest = torch.cat([b.x[:, 10:109], b.x[:, 110:]], dim=1)
    assert (rest == 0).all()
    assert b.mask[:, 110:].all() and not b.mask[:, :110].any()
    assert torch.equal(b.y[:, 110:], b.x[:, :10] - 1)


# ----------------------------------------------------------------------------- ACT tasks


def test_parity_labels_and_positions():
    task = small("parity")
    b = task.train_batch(0, 2048)
    assert b.x.shape == (2048, 1, 64) and b.y.shape == (2048, 1)
    x = b.x.squeeze(1)
    assert set(x.unique().tolist()) <= {-1.0, 0.0, 1.0}
    plus = (x == 1).sum(dim=1)
    assert torch.equal(b.y.squeeze(1), (plus % 2).float())
    nonzero = (x != 0).sum(dim=1)
    assert nonzero.min() >= 1 and nonzero.max() <= 64 and nonzero.max() >= 60 and nonzero.min() <= 4
    last = torch.tensor([row.nonzero().max().item() for row in x])
    assert (last >= nonzero).float().mean() > 0.5  # random positions, not a prefix
    assert (x == -1).any() and (x == 1).any()


def test_parity_prefix_layout_puts_the_nonzero_entries_first():
    random, prefix = small("parity"), small("parity", layout="prefix")
    assert random.layout == "random"  # the paper's task is the default
    a, b = random.train_batch(3, 1024), prefix.train_batch(3, 1024)
    xa, xb = a.x.squeeze(1), b.x.squeeze(1)
    count = (xb != 0).sum(dim=1)
    assert torch.equal(count, (xa != 0).sum(dim=1))  # same k per sequence, from the same stream
    first = torch.arange(64).expand(1024, -1) < count.unsqueeze(1)
    assert torch.equal(xb != 0, first)  # exactly the first k entries, as x[:k] in Fojo et al.'s code
    assert torch.equal(b.y.squeeze(1), ((xb == 1).sum(dim=1) % 2).float())
    assert not torch.equal(xa != 0, first)
    val = concat(list(prefix.eval_batches("val", 128))).x.squeeze(1)
    assert torch.equal(val != 0, torch.arange(64).expand(len(val), -1) < (val != 0).sum(dim=1, keepdim=True))
    with pytest.raises(ValueError, match="layout must be one of random, prefix"):
        small("parity", layout="suffix")


def test_parity_layout_is_a_set_option():
    from adaptrnn.config import make_config

    config = make_config({"task": "parity", "model": "act-rnn"}, sets=["layout=prefix"])
    assert config.task_options["layout"] == "prefix"
    assert make_config({"task": "parity", "model": "rnn"}).task_options["layout"] == "random"


def test_parity_extrapolation_split():
    task = make_task("parity", size=96, max_nonzero=48, test_min_nonzero=49, val_size=200, test_size=300)
    train = (task.train_batch(0, 500).x != 0).sum(dim=-1)
    test = (concat(list(task.eval_batches("test", 128))).x != 0).sum(dim=-1)
    assert train.max() <= 48 and test.min() >= 49 and test.max() <= 96


GATES = {
    0: lambda p, q: not (p or q),  # NOR
    1: lambda p, q: (not p) and q,  # Xq
    2: lambda p, q: p and not q,  # ABJ
    3: lambda p, q: p != q,  # XOR
    4: lambda p, q: not (p and q),  # NAND
    5: lambda p, q: p and q,  # AND
    6: lambda p, q: p == q,  # XNOR
    7: lambda p, q: (not p) or q,  # if/then
    8: lambda p, q: p or not q,  # then/if
    9: lambda p, q: p or q,  # OR
}


def test_logic_targets_by_reapplying_the_gates():
    task = small("logic")
    b = task.train_batch(2, 200)
    assert b.x.shape == (200, 10, 102)
    assert torch.equal(b.mask, torch.arange(10) < b.lengths[:, None])
    assert b.lengths.min() == 1 and b.lengths.max() == 10
    for i in range(200):
        target = None
        for t in range(int(b.lengths[i])):
            v = b.x[i, t]
            b_prev = bool(v[0]) if t == 0 else target
            if t > 0:
                assert v[0] == 0
            b_cur = bool(v[1])
            chunks = v[2:].view(10, 10)
            n_gates = int(chunks.sum())
            assert n_gates >= 1 and chunks[:n_gates].sum(dim=1).eq(1).all()
            for c in range(n_gates):
                gate = int(chunks[c].argmax())
                b_prev, b_cur = b_cur, bool(GATES[gate](b_cur, b_prev))
            target = b_cur
            assert bool(b.y[i, t]) == target
        assert (b.x[i, int(b.lengths[i]) :] == 0).all()


def test_addition_targets_by_decoding_digits():
    task = small("addition")
    b = task.train_batch(4, 300)
    assert b.x.shape == (300, 5, 50) and task.num_outputs == 66 and b.y.shape == (300, 5, 6)
    assert not b.mask[:, 0].any()
    for i in range(300):
        total = 0
        n = int(b.lengths[i])
        assert torch.equal(b.mask[i], (torch.arange(5) >= 1) & (torch.arange(5) < n))
        for t in range(n):
            chunks = b.x[i, t].view(5, 10)
            d = int(chunks.sum())
            assert 1 <= d <= 5 and chunks[:d].sum(dim=1).eq(1).all()
            total += sum(int(chunks[j].argmax()) * 10**j for j in range(d))
            if t >= 1:
                digits = b.y[i, t].tolist()
                k = digits.index(10) if 10 in digits else 6
                assert all(c == 10 for c in digits[k:])
                assert sum(c * 10**j for j, c in enumerate(digits[:k])) == total
                assert k == len(str(total))


def test_sort_targets_match_argsort():
    task = small("sort")
    b = task.train_batch(1, 300)
    assert b.x.shape == (300, 30, 2) and task.num_outputs == 15
    assert b.lengths.min() == 4 and b.lengths.max() == 30
    for i in range(300):
        n = int(b.lengths[i]) // 2
        values = b.x[i, :n, 0]
        assert torch.equal(b.x[i, :, 1].nonzero().flatten(), torch.tensor([n - 1]))
        assert (b.x[i, n:] == 0).all()
        assert torch.equal(b.y[i, n : 2 * n], torch.argsort(values))
        assert torch.equal(b.mask[i].nonzero().flatten(), torch.arange(n, 2 * n))


def perfect_prediction(task, b: Batch) -> torch.Tensor:
    """Logits that get every target right."""
    if task.name in ("parity", "logic"):
        return ((b.y * 2 - 1) * 10).unsqueeze(-1) if task.per_step else (b.y * 2 - 1) * 10
    if task.name == "addition":
        return (F.one_hot(b.y, 11).float() * 10).flatten(2)
    return F.one_hot(b.y, task.num_outputs).float() * 10


@pytest.mark.parametrize("name", ["parity", "logic", "addition", "sort", "copy", "frequency"])
def test_metrics_on_perfect_and_broken_predictions(name):
    task = small(name)
    b = task.train_batch(0, 64)
    pred = perfect_prediction(task, b)
    num, den = task.metric_parts(pred, b)
    assert num == (den if task.higher_is_better else 0.0) and den > 0
    assert task.loss(pred, b).item() < 0.01
    if b.mask is not None:  # changing unmasked positions changes nothing
        noisy = pred + torch.randn(pred.shape) * (~b.mask).reshape(*b.mask.shape, 1) * 100
        assert task.metric_parts(noisy, b) == (num, den)
        assert task.loss(noisy, b).item() == pytest.approx(task.loss(pred, b).item())
    broken = -pred if task.name in ("parity", "logic") else pred.roll(1, dims=-1)
    num_b, _ = task.metric_parts(broken, b)
    assert num_b == (0.0 if task.higher_is_better else den)


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", GENERATED)
def test_batches_are_a_function_of_seed_and_step(name):
    a, b, c = small(name, seed=1), small(name, seed=1), small(name, seed=2)
    assert same(a.train_batch(7, 16), b.train_batch(7, 16))
    assert not same(a.train_batch(7, 16), a.train_batch(8, 16))
    assert not same(a.train_batch(7, 16), c.train_batch(7, 16))


@pytest.mark.parametrize("name", GENERATED)
def test_eval_sets_are_fixed(name):
    a, b = small(name), small(name)
    val = concat(list(a.eval_batches("val", 64)))
    assert val.x.shape[0] == 300
    assert same(val, concat(list(b.eval_batches("val", 1000))))
    assert same(val, concat(list(a.eval_batches("val", 7))))
    test = concat(list(a.eval_batches("test", 64)))
    assert test.x.shape[0] == 200 and not torch.equal(test.x, val.x[:200])
    with pytest.raises(ValueError):
        next(a.eval_batches("train", 8))


# ----------------------------------------------------------------------------- IDX / images


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_read_idx_plain_gz_and_errors(tmp_path: Path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "img").write_bytes(idx_bytes(images))
    (tmp_path / "img.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (tmp_path / "hidden_gz").write_bytes(gzip.compress(idx_bytes(images)))
    for name in ("img", "img.gz", "hidden_gz"):
        out = read_idx(tmp_path / name)
        assert out.dtype == np.uint8 and np.array_equal(out, images)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    (tmp_path / "lab").write_bytes(idx_bytes(labels))
    assert np.array_equal(read_idx(tmp_path / "lab"), labels)

    (tmp_path / "short").write_bytes(idx_bytes(images)[:-3])
    (tmp_path / "long").write_bytes(idx_bytes(images) + b"\0")
    (tmp_path / "magic").write_bytes(b"\x12\x34" + idx_bytes(images)[2:])
    (tmp_path / "short.gz").write_bytes(gzip.compress(idx_bytes(images))[:-10])
    (tmp_path / "tiny").write_bytes(b"\0\0\x08\x03\0\0")
    for name, word in [("short", "truncated"), ("long", "trailing"), ("magic", "magic"), ("short.gz", "gzip")]:
        with pytest.raises(ValueError, match=word):
            read_idx(tmp_path / name)
    with pytest.raises(ValueError):
        read_idx(tmp_path / "tiny")


def fake_mnist(directory: Path, n_train: int = 12, n_test: int = 5, gz: bool = True) -> None:
    """Images whose first pixel is the image index and whose label is index % 10."""
    directory.mkdir()
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 4, 4), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n)
        images[:, 3, 3] = 255
        write = (lambda p, b: p.write_bytes(gzip.compress(b))) if gz else (lambda p, b: p.write_bytes(b))
        suffix = ".gz" if gz else ""
        write(directory / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(images))
        write(directory / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(np.arange(n) % 10))


@pytest.mark.parametrize("gz", [True, False])
def test_pixel_task_on_fake_files(tmp_path: Path, gz: bool):
    fake_mnist(tmp_path / "d", gz=gz)
    task = make_task("pixel-mnist", seed=3, data_dir=str(tmp_path / "d"), val_size="2")
    assert (task.input_size, task.num_outputs, task.per_step) == (1, 10, False)
    seen = []
    for step in range(5):  # one epoch of 10 training images
        b = task.train_batch(step, 2)
        assert b.x.shape == (2, 16, 1) and b.x.min() >= 0 and b.x.max() == 1.0
        index = (b.x[:, 0, 0] * 255).round().long()
        assert torch.equal(b.y, index % 10)
        seen += index.tolist()
    assert sorted(seen) == list(range(10))
    assert same(
        task.train_batch(4, 3),
        make_task("pixel-mnist", seed=3, data_dir=str(tmp_path / "d"), val_size=2).train_batch(4, 3),
    )
    val = concat(list(task.eval_batches("val", 1)))
    assert ((val.x[:, 0, 0] * 255).round().long()).tolist() == [10, 11]
    assert concat(list(task.eval_batches("test", 2))).x.shape == (5, 16, 1)
    permuted = make_task("pixel-mnist", seed=3, data_dir=str(tmp_path / "d"), val_size=2, permute="true")
    px = permuted.train_batch(0, 2).x
    assert not torch.equal(px, task.train_batch(0, 2).x)
    assert torch.equal(px.sort(dim=1).values, task.train_batch(0, 2).x.sort(dim=1).values)


def test_pixel_task_missing_data(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="data_dir"):
        make_task("pixel-mnist")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        make_task("pixel-fashion-mnist", data_dir=str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="train-images"):
        make_task("pixel-mnist", data_dir=str(tmp_path / "empty"))


# ----------------------------------------------------------------------------- char-lm


def test_char_lm_vocab_targets_and_state(tmp_path: Path):
    text = "the cat sat on the mat. " * 40 + "zq"  # 'z', 'q' only in the test split
    path = tmp_path / "tiny.txt"
    path.write_text(text)
    task = make_task("char-lm", path=str(path), bptt="7", split="0.9,0.05,0.05")
    train_text = text[: round(len(text) * 0.9)]
    assert task.vocab == ["<unk>"] + sorted(set(train_text))
    assert task.input_size == task.num_outputs == len(task.vocab) and task.tokens and task.per_step
    B = 4
    stride = len(train_text) // B
    chunks = (stride - 1) // 7
    for step in (0, 1, chunks - 1, chunks, chunks + 2):
        b = task.train_batch(step, B)
        k = step % chunks
        assert b.x.shape == b.y.shape == (B, 7) and b.carry_state == (k > 0)
        for s in range(B):
            start = s * stride + k * 7
            assert task.decode(b.x[s]) == train_text[start : start + 7]
            assert task.decode(b.y[s]) == train_text[start + 1 : start + 8]
    assert any((b.y == task.stoi["<unk>"]).any() for b in task.eval_batches("test", 2))
    parts = [task.metric_parts(torch.zeros(*b.y.shape, task.num_outputs), b) for b in task.eval_batches("val", 3)]
    num, den = map(sum, zip(*parts, strict=True))
    n_val = round(len(text) * 0.95) - len(train_text)
    assert num / den == pytest.approx(math.log2(len(task.vocab)))
    assert den == 3 * (n_val // 3 - 1)  # every stream's characters are predicted once
    flags = [b.carry_state for b in task.eval_batches("val", 3)]
    assert flags[0] is False and all(flags[1:]) and len(flags) > 1


def test_char_lm_ptb_char_directory(tmp_path: Path):
    corpus = tmp_path / "ptb"
    corpus.mkdir()
    (corpus / "ptb.char.train.txt").write_text("a b _ c a\nb a _ c\n")
    (corpus / "ptb.char.valid.txt").write_text("c a b\n")
    (corpus / "ptb.char.test.txt").write_text("a x _ b\n")
    task = make_task("char-lm", path=str(corpus), bptt=3)
    assert task.format == "ptb_char"
    assert task.vocab == ["<unk>", "\n", "_", "a", "b", "c"]
    assert task.decode(task.data["val"]) == "cab\n"
    assert task.decode(task.data["test"]) == "a<unk>_b\n"


def test_char_lm_bundled_corpus():
    task = make_task("char-lm")
    total = sum(d.numel() for d in task.data.values())
    assert total == 1_115_394 and task.vocab[0] == "<unk>" and " " in task.stoi
    assert task.train_batch(0, 8).x.shape == (8, 100)


# ----------------------------------------------------------------------------- registry


def test_registry_names_and_errors():
    assert set(TASKS) == {
        "adding", "frequency", "pixel-mnist", "pixel-fashion-mnist", "parity",
        "logic", "addition", "sort", "char-lm", "copy",
    }  # fmt: skip
    with pytest.raises(ValueError, match="valid tasks: .*adding.*copy"):
        make_task("nope")
    with pytest.raises(ValueError, match="valid options: .*length"):
        make_task("adding", lenght=3)
    with pytest.raises(ValueError, match="'length'"):
        make_task("adding", length="abc")
    with pytest.raises(ValueError, match="'value_low'"):
        make_task("adding", value_low="low")
    with pytest.raises(ValueError, match="'permute'"):
        make_task("pixel-mnist", permute="maybe")
    with pytest.raises(ValueError, match="'split'"):
        make_task("char-lm", split="0.9,0.1")
    with pytest.raises(TypeError, match="'length'"):
        make_task("adding", length=2.5)
    assert make_task("adding", length="100", value_high="1").train_batch(0, 2).x.shape == (2, 100, 2)


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir() and not os.environ.get("CI"),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist; .ci/run installs it, CI must read it)",
)
def test_real_fashion_mnist_if_installed():
    task = make_task("pixel-fashion-mnist")
    assert {k: v.shape[0] for k, v in task.images.items()} == {"train": 55000, "val": 5000, "test": 10000}
    batch = task.train_batch(0, 256)
    assert batch.x.shape == (256, 784, 1) and batch.x.min() == 0.0 and batch.x.max() == 1.0
    assert set(batch.y.tolist()) == set(range(10))  # the ten classes, labels read from the real file
    test_labels = torch.cat([b.y for b in task.eval_batches("test", 5000)])
    assert torch.bincount(test_labels).tolist() == [1000] * 10  # Fashion-MNIST's balanced test set
