"""Where metrics go: a JSONL file per run (always), TensorBoard (optional), callbacks (notebooks).

Metric names are stable and slash-separated (``bapo/c_low``, ``entropy/mean``), the same in every
sink.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSONL file (a torn last line from a crash is skipped)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no nan/inf
    return v


class MetricsLogger:
    """Appends one JSON object per line and flushes it, so a crash loses no finished step."""

    def __init__(
        self,
        path: str | Path,
        *,
        tensorboard_dir: str | Path | None = None,
        callbacks: Iterable[Callable[[dict], None]] = (),
        keep_until_step: int | None = None,
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep_until_step is not None:  # resuming: drop records past the checkpoint
            from bapo.train.checkpoint import atomic_write_text

            kept = [r for r in read_jsonl(self.path) if r.get("step", -1) <= keep_until_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = self.path.open("a")
        self.callbacks = list(callbacks)
        self._tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # pragma: no cover - depends on the extra
                raise ImportError(
                    "run.tensorboard=true needs the tensorboard package: pip install 'bapo[tensorboard]'"
                ) from e
            self._tb = SummaryWriter(str(tensorboard_dir))

    def log(self, record: dict) -> None:
        self.write(record)
        self.notify(record)

    def write(self, record: dict) -> None:
        """The record into the file (flushed) and TensorBoard."""
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = record.get("step", 0)
            for k, v in record.items():
                if "/" in k and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def notify(self, record: dict) -> None:
        """The record to the callbacks (live plots, user code)."""
        for cb in self.callbacks:
            cb(record)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
