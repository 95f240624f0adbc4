"""Sequential (pixel-by-pixel) image classification from standard IDX files (MNIST, Fashion-MNIST)."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .base import Batch, ClassificationMixin, Task, split_key

_GZIP_MAGIC = b"\x1f\x8b"
# IDX type byte -> big-endian numpy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    """File contents, gunzipped if the name ends in .gz or the content starts with the gzip magic."""
    raw = path.read_bytes()
    if path.name.endswith(".gz") or raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: not a valid gzip file ({err})") from err
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format) into an array of its declared dtype and shape.

    Header: two zero bytes, a type byte (0x08 = unsigned byte, ...), the number of dimensions,
    then one big-endian uint32 per dimension.  Raises ``ValueError`` on a bad magic number or a
    size mismatch (truncated or trailing data).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        what = "truncated" if len(data) - header < expected else "has trailing data"
        raise ValueError(f"{path}: IDX file {what}: shape {shape} needs {expected} bytes, got {len(data) - header}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_file(data_dir: Path, prefix: str, kind: str) -> Path:
    """The file ``{prefix}-{kind}`` in ``data_dir``, accepting '.' for '-' before idx and '.gz'."""
    stem, idx = kind.split("-", 1)  # e.g. images, idx3-ubyte
    for name in (f"{prefix}-{stem}-{idx}", f"{prefix}-{stem}.{idx}"):
        for suffix in ("", ".gz"):
            if (data_dir / (name + suffix)).is_file():
                return data_dir / (name + suffix)
    raise FileNotFoundError(f"{data_dir}: missing {prefix}-{kind}[.gz]; point --set data_dir=... at the IDX files")


def load_idx_split(data_dir: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) of the ``train`` or ``t10k`` files."""
    images = read_idx(_find_file(data_dir, prefix, "images-idx3-ubyte"))
    labels = read_idx(_find_file(data_dir, prefix, "labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{data_dir}: {prefix} images {images.shape} and labels {labels.shape} do not match")
    return images, labels


def _flatten(images: np.ndarray) -> Tensor:
    """(N, H, W) uint8 array -> (N, H*W) uint8 tensor (a copy, so torch owns writable memory)."""
    return torch.from_numpy(np.ascontiguousarray(images.reshape(images.shape[0], -1)).copy())


class PixelImageTask(ClassificationMixin, Task):
    """Pixel-by-pixel classification: one pixel per step, class from the last step.

    x: (B, H*W, 1) float in [0, 1] (T = 784 for 28x28), pixels in row-major order, or in a
    fixed random order (``permute=True``, drawn from the seed).  y: (B,) int64;
    pred: (B, num_classes); CE loss; metric accuracy.
    The last ``val_size`` training images are the validation set; ``test`` is the t10k files.
    Training batch ``k`` is rows ``k*B .. k*B+B-1`` of the concatenation of per-epoch
    permutations, the permutation of epoch ``e`` coming from ``generator(0, e)``.
    """

    name = "pixel-image"
    input_size = 1
    per_step = False
    metric_name = "accuracy"
    higher_is_better = True
    default_data_dir: str | None = None
    install_hint = ""

    def __init__(self, seed: int = 0, data_dir: str | None = None, permute: bool = False, val_size: int = 5000) -> None:
        super().__init__(seed)
        directory = self._resolve_dir(data_dir)
        train_x, train_y = load_idx_split(directory, "train")
        test_x, test_y = load_idx_split(directory, "t10k")
        if not 0 <= val_size < train_x.shape[0]:
            raise ValueError(f"{self.name}: val_size must be in [0, {train_x.shape[0]})")
        n_train = train_x.shape[0] - val_size
        self.images = {  # (N, H*W) uint8
            "train": _flatten(train_x[:n_train]),
            "val": _flatten(train_x[n_train:]),
            "test": _flatten(test_x),
        }
        self.labels = {
            "train": torch.from_numpy(train_y[:n_train].astype(np.int64)),
            "val": torch.from_numpy(train_y[n_train:].astype(np.int64)),
            "test": torch.from_numpy(test_y.astype(np.int64)),
        }
        self.length = self.images["train"].shape[1]
        self.num_outputs = int(max(train_y.max(), test_y.max())) + 1
        self.order = torch.randperm(self.length, generator=self.generator(3)) if permute else None
        self._perm_cache: dict[int, Tensor] = {}

    def _resolve_dir(self, data_dir: str | None) -> Path:
        given = data_dir or self.default_data_dir
        if given is None:
            raise FileNotFoundError(
                f"{self.name}: no data directory; pass --set data_dir=/path/to/dir holding "
                "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
                "t10k-labels-idx1-ubyte[.gz]"
            )
        path = Path(given).expanduser()
        if not path.is_dir():
            hint = f" or {self.install_hint}" if self.install_hint else ""
            raise FileNotFoundError(f"{self.name}: data directory {path} not found; pass --set data_dir=...{hint}")
        return path

    def _batch(self, split: str, index: Tensor) -> Batch:
        pixels = self.images[split][index]  # (B, T) uint8
        if self.order is not None:
            pixels = pixels[:, self.order]
        return Batch((pixels.float() / 255.0).unsqueeze(2), self.labels[split][index])

    def _epoch_perm(self, epoch: int) -> Tensor:
        if epoch not in self._perm_cache:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            n = self.images["train"].shape[0]
            self._perm_cache[epoch] = torch.randperm(n, generator=self.generator(0, epoch))
        return self._perm_cache[epoch]

    def train_batch(self, step: int, batch_size: int) -> Batch:
        n = self.images["train"].shape[0]
        start = step * batch_size
        index = []
        while len(index) < batch_size:  # a batch may straddle epochs
            epoch, offset = divmod(start + len(index), n)
            index.extend(self._epoch_perm(epoch)[offset : offset + batch_size - len(index)].tolist())
        return self._batch("train", torch.tensor(index))

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        split_key(split)
        n = self.images[split].shape[0]
        for start in range(0, n, batch_size):
            yield self._batch(split, torch.arange(start, min(start + batch_size, n)))


class PixelMNISTTask(PixelImageTask):
    """Pixel-by-pixel MNIST; ``data_dir`` must be given (no copy of MNIST ships offline)."""

    name = "pixel-mnist"


class PixelFashionMNISTTask(PixelImageTask):
    """Pixel-by-pixel Fashion-MNIST, the offline stand-in for MNIST."""

    name = "pixel-fashion-mnist"
    default_data_dir = "/usr/share/datasets/fashion-mnist/"
    install_hint = "apt-get install dataset-fashion-mnist"

    def __init__(
        self, seed: int = 0, data_dir: str | None = default_data_dir, permute: bool = False, val_size: int = 5000
    ) -> None:
        super().__init__(seed, data_dir, permute, val_size)
