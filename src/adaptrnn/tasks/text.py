"""Character-level language modelling with truncated backpropagation through time."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .base import Batch, Task, masked_cross_entropy, split_key

BUNDLED_CORPUS = Path(__file__).resolve().parent.parent / "data" / "tinyshakespeare.txt"
UNK = "<unk>"
_SPLITS = ("train", "val", "test")
_PRESPLIT_SUFFIXES = {"train": "train.txt", "val": "valid.txt", "test": "test.txt"}


def _presplit_files(directory: Path) -> dict[str, Path]:
    """The ``*train.txt`` / ``*valid.txt`` / ``*test.txt`` files of a pre-split corpus directory."""
    files = {}
    for split, suffix in _PRESPLIT_SUFFIXES.items():
        found = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(suffix))
        if len(found) != 1:
            raise ValueError(
                f"char-lm: {directory} must hold exactly one *{suffix} file (found {[p.name for p in found]})"
            )
        files[split] = found[0]
    return files


def _ptb_char_symbols(text: str) -> list[str]:
    """PTB-char: space-separated symbols ('_' marks word boundaries), one sentence per line.

    Each line contributes its symbols followed by a newline symbol, so sentence ends are
    predicted like any other character.
    """
    symbols: list[str] = []
    for line in text.splitlines():
        tokens = line.split()
        if tokens:
            symbols.extend(tokens)
            symbols.append("\n")
    return symbols


def _to_codes(raw: dict[str, bytes], fmt: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per-split integer codes (N,) and the symbol of each code.

    ``raw`` format: one code per byte (text8/enwik8 are byte streams; BPC is then bits per byte,
    the enwik8 convention).  ``ptb_char``: one code per space-separated symbol.
    """
    if fmt == "raw":
        return {s: np.frombuffer(b, dtype=np.uint8).astype(np.int64) for s, b in raw.items()}, [
            chr(i) for i in range(256)
        ]
    table: dict[str, int] = {}
    codes = {}
    for split, content in raw.items():
        symbols = _ptb_char_symbols(content.decode("utf-8", errors="replace"))
        codes[split] = np.array([table.setdefault(sym, len(table)) for sym in symbols], dtype=np.int64)
    names = [""] * len(table)
    for sym, code in table.items():
        names[code] = sym
    return codes, names


class CharLMTask(Task):
    """Next-character prediction, bits per character.

    Corpus: ``path`` is a text file (split by position into ``split`` = train/val/test
    fractions; enwik8's 90M/5M/5M is ``0.9,0.05,0.05``) or a directory with pre-split
    ``*train.txt``, ``*valid.txt``, ``*test.txt`` files.  ``format``: ``raw`` (bytes),
    ``ptb_char`` (space-separated symbols, see :func:`_ptb_char_symbols`) or ``auto``
    (``ptb_char`` for a pre-split directory whose files are named ``*.char.*``, else raw).
    Default: the bundled tinyshakespeare corpus.

    Vocabulary: id 0 is ``<unk>`` (symbols absent from the training split), then the training
    symbols in sorted order; ``vocab[id]`` is the symbol, ``input_size == num_outputs == len(vocab)``.

    Batches: x (B, bptt) int64 ids, y (B, bptt) the next ids, no mask; pred (B, bptt, V).
    Truncated BPTT: training batch ``k`` reads B parallel streams, stream b starting at
    ``b * (N // B)``, chunk ``k mod num_chunks``; ``carry_state`` is False on chunk 0 (a new
    pass) and True otherwise.  ``eval_batches`` walks the whole split the same way (the last
    chunk may be shorter), with at most ``(N - 1) // bptt`` streams so that short splits still work.
    Metric ``bpc``: (sum of CE in bits, number of predicted characters).
    """

    name = "char-lm"
    tokens = True
    per_step = True
    metric_name = "bpc"
    higher_is_better = False

    def __init__(
        self,
        seed: int = 0,
        path: str | None = None,
        bptt: int = 100,
        split: tuple[float, float, float] = (0.9, 0.05, 0.05),
        format: str = "auto",
    ) -> None:
        super().__init__(seed)
        if bptt < 1:
            raise ValueError("char-lm: bptt must be >= 1")
        if format not in ("auto", "raw", "ptb_char"):
            raise ValueError(f"char-lm: format must be auto, raw or ptb_char, got {format!r}")
        self.bptt = bptt
        source = Path(path).expanduser() if path else BUNDLED_CORPUS
        raw, fmt = self._read(source, tuple(split), format)
        codes, names = _to_codes(raw, fmt)
        self.format = fmt
        self._build_vocab(codes, names)

    def _read(self, source: Path, split: tuple, fmt: str) -> tuple[dict[str, bytes], str]:
        if source.is_dir():
            files = _presplit_files(source)
            if fmt == "auto":
                fmt = "ptb_char" if ".char." in files["train"].name else "raw"
            return {s: files[s].read_bytes() for s in _SPLITS}, fmt
        if not source.is_file():
            raise FileNotFoundError(f"char-lm: corpus {source} not found; pass --set path=FILE_OR_DIR")
        if len(split) != 3 or min(split) <= 0 or sum(split) > 1 + 1e-6:
            raise ValueError(f"char-lm: split must be three positive fractions summing to <= 1, got {split}")
        data = source.read_bytes()
        if fmt == "ptb_char":  # split at line boundaries so no symbol is cut in half
            lines = data.splitlines(keepends=True)
            cuts = [round(len(lines) * sum(split[:i])) for i in range(1, 4)]
            parts = [lines[a:b] for a, b in zip([0, *cuts[:2]], cuts, strict=True)]
            return {s: b"".join(p) for s, p in zip(_SPLITS, parts, strict=True)}, fmt
        cuts = [round(len(data) * sum(split[:i])) for i in range(1, 4)]
        return {s: data[a:b] for s, a, b in zip(_SPLITS, [0, *cuts[:2]], cuts, strict=True)}, "raw"

    def _build_vocab(self, codes: dict[str, np.ndarray], names: list[str]) -> None:
        train_codes = sorted(np.unique(codes["train"]).tolist(), key=lambda c: names[c])
        lookup = np.zeros(len(names), dtype=np.int64)  # code -> id; unseen codes stay 0 = <unk>
        lookup[train_codes] = np.arange(1, len(train_codes) + 1)
        self.vocab = [UNK] + [names[c] for c in train_codes]
        self.stoi = {sym: i for i, sym in enumerate(self.vocab)}
        self.input_size = self.num_outputs = len(self.vocab)
        dtype = torch.int16 if len(self.vocab) < 2**15 else torch.int32  # enwik8 is 100M chars
        self.data = {s: torch.from_numpy(lookup[codes[s]]).to(dtype) for s in _SPLITS}
        for s in _SPLITS:
            if self.data[s].numel() < 2:
                raise ValueError(f"char-lm: the {s} split has fewer than 2 characters")

    def decode(self, ids: Tensor) -> str:
        """Text of a 1-D tensor of ids (PTB-char '_' stays '_')."""
        return "".join(self.vocab[i] for i in ids.tolist())

    @staticmethod
    def _chunk(data: Tensor, streams: int, start: int, length: int) -> Tensor:
        """(streams, length + 1) ids: positions ``b * (N // streams) + start + [0, length]``."""
        stride = data.numel() // streams
        index = torch.arange(streams)[:, None] * stride + start + torch.arange(length + 1)
        return data[index].long()

    def num_train_chunks(self, batch_size: int) -> int:
        """Chunks per training pass with ``batch_size`` streams."""
        chunks = (self.data["train"].numel() // batch_size - 1) // self.bptt
        if chunks < 1:
            raise ValueError(
                f"char-lm: training split ({self.data['train'].numel()} chars) too short for "
                f"batch_size={batch_size} x bptt={self.bptt}: it needs batch_size x (bptt + 1) = "
                f"{batch_size * (self.bptt + 1)}; lower --set batch_size or bptt, or use a longer corpus"
            )
        return chunks

    def check_batch_size(self, batch_size: int) -> None:
        self.num_train_chunks(batch_size)

    def train_batch(self, step: int, batch_size: int) -> Batch:
        k = step % self.num_train_chunks(batch_size)
        seq = self._chunk(self.data["train"], batch_size, k * self.bptt, self.bptt)
        return Batch(seq[:, :-1], seq[:, 1:], carry_state=k > 0)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        split_key(split)
        data = self.data[split]
        streams = max(1, min(batch_size, (data.numel() - 1) // self.bptt))
        targets = data.numel() // streams - 1  # predictions per stream
        for k, start in enumerate(range(0, targets, self.bptt)):
            seq = self._chunk(data, streams, start, min(self.bptt, targets - start))
            yield Batch(seq[:, :-1], seq[:, 1:], carry_state=k > 0)

    def loss(self, pred: Tensor, batch: Batch) -> Tensor:
        return masked_cross_entropy(pred, batch.y, batch.mask).mean()

    def metric_parts(self, pred: Tensor, batch: Batch) -> tuple[float, float]:
        ce = masked_cross_entropy(pred.detach().float(), batch.y, batch.mask)
        count = batch.y.numel() if batch.mask is None else batch.mask.sum()
        return float(ce.sum()) / math.log(2), float(count)
