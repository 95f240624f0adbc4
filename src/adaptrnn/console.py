"""What the commands show the user besides their results: progress, and the folders they create.

A progress bar redraws itself many times a second, which on a terminal is one line and in a
log file is thousands of updates (a 2,000-step run wrote 1,818 of them, 175 KB). So the bar
is drawn only when stderr is a terminal; otherwise :class:`PlainProgress` writes a plain line
every twentieth of the run (and at least once a minute), and one at the end.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

LINES_PER_RUN = 20  # plain progress lines over a whole run
MAX_SILENCE_S = 60.0  # ... and at least one this often


class PlainProgress:
    """tqdm's ``update`` / ``set_postfix`` / ``close``, written as plain lines.

    A line reads ``train: step 400/2000 (20%), 31 s, loss=0.0012, upd=0.840``.
    """

    def __init__(self, total: int, initial: int = 0, desc: str = "", file: TextIO | None = None) -> None:
        self.total, self.n, self.desc = total, initial, desc
        self.file = file if file is not None else sys.stderr
        self.every = max(1, total // LINES_PER_RUN)
        self.postfix: dict[str, Any] = {}
        self.start = self.last_line = time.monotonic()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.n % self.every == 0 or self.n >= self.total or now - self.last_line >= MAX_SILENCE_S:
            self.last_line = now
            extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
            percent = 100 * self.n / max(1, self.total)
            print(
                f"{self.desc}: step {self.n}/{self.total} ({percent:.0f}%), {now - self.start:.0f} s{extra}",
                file=self.file,
                flush=True,
            )

    def close(self) -> None:
        pass


def progress_bar(total: int, initial: int = 0, enabled: bool = True, desc: str = "") -> tqdm | PlainProgress:
    """A tqdm bar on a terminal, plain lines when stderr is redirected, nothing when not ``enabled``."""
    if enabled and not sys.stderr.isatty():
        return PlainProgress(total, initial, desc)
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc)


def output_path(path: str | Path) -> Path:
    """``path``, creating its folder if missing, and saying so on stderr.

    A missing folder is created rather than refused (a command that ran for minutes should
    not fail at the end for want of a folder), but not silently: a misspelt path shows.
    """
    path = Path(path)
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"adaptrnn: created folder {path.parent} for {path.name}", file=sys.stderr)
    return path
