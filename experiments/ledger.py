"""The training time a run directory has cost, over every session that worked on it.

A paper-scale run takes hours and is resumed across sessions, so the wall time of the last
``python -m experiments ... --resume`` says little about the run. Each finished epoch of each
chunk appends one line to ``<run>/epoch_seconds.jsonl``::

    {"chunk": "dropout/adam/final_chunk0", "epoch": 12, "seconds": 3.91}

(the epoch's training, its test evaluation and its checkpoint; the first epoch of a process
includes compilation). An epoch trained again after an interruption (its checkpoint was not
written) appears twice: both cost time. A fresh run (no ``--resume``) starts a new ledger.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

FILE = "epoch_seconds.jsonl"


class EpochLedger:
    """Appends epoch times to ``directory/epoch_seconds.jsonl`` and sums them."""

    def __init__(self, directory: str | Path, fresh: bool):
        self.path = Path(directory) / FILE
        if fresh:
            self.path.unlink(missing_ok=True)
        elif self.path.is_file() and self.path.read_bytes()[-1:] not in (b"", b"\n"):
            # A kill mid-write tore the last line: end it, so the next epoch's line stands alone.
            with self.path.open("a") as f:
                f.write("\n")

    def recorder(self, chunk: str) -> Callable[[int, float], None]:
        """``record(epoch, seconds)`` for one chunk (``variant/optimizer/<tag>chunk<k>``)."""

        def record(epoch: int, seconds: float) -> None:
            line = json.dumps({"chunk": chunk, "epoch": epoch, "seconds": round(seconds, 3)})
            with self.path.open("a") as f:
                f.write(line + "\n")

        return record

    def totals(self) -> dict[str, float]:
        """Seconds per ``variant/optimizer`` and in all (key ``""``), from the whole ledger."""
        out: dict[str, float] = {"": 0.0}
        if not self.path.is_file():
            return out
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a kill mid-write
                continue
            owner = entry["chunk"].rsplit("/", 1)[0]
            out[owner] = out.get(owner, 0.0) + entry["seconds"]
            out[""] += entry["seconds"]
        return {k: round(v, 1) for k, v in out.items()}
