"""Run outputs on rank 0: metrics.jsonl, TensorBoard events, a progress bar or log lines."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("medley")


class RunLogger:
    def __init__(self, run_dir: Path | None, cfg: Any, total_steps: int, start_step: int = 0,
                 resumed: bool = False):
        self.enabled = run_dir is not None
        self.run_dir, self.total = run_dir, total_steps
        if self.enabled and resumed:
            truncate_metrics(run_dir / "metrics.jsonl", start_step)
        self._jsonl = (os.open(run_dir / "metrics.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                       if self.enabled else None)
        self._tb = None
        if self.enabled and cfg.logger.tensorboard:
            from tensorboardX import SummaryWriter

            # purge_step: events the interrupted segment wrote after the checkpoint are dropped
            self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if resumed else None)
        mode = cfg.logger.progress
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode if self.enabled else "off"
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, desc="train")
        self._t0, self._s0 = time.time(), start_step

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._append_line(json.dumps({"step": step, "time": round(time.time(), 3), **values}) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)

    def _append_line(self, line: str) -> None:
        """One whole line or none: unbuffered, and a failed write (a full disk) is cut back off the
        file and raised naming it, so no half line is left for a reader or a resumed run."""
        data, fd = line.encode(), self._jsonl
        end = os.lseek(fd, 0, os.SEEK_END)
        try:
            done = 0
            while done < len(data):
                done += os.write(fd, data[done:])
        except OSError as exc:
            from framework.checkpoint import write_error

            try:
                os.ftruncate(fd, end)
            except OSError:
                pass
            raise write_error(self.run_dir / "metrics.jsonl", exc) from exc

    def progress(self, step: int, loss: float | None, samples_per_s: float | None) -> None:
        if self.mode == "off":
            return
        if self._bar is not None:
            self._bar.n = step
            post = {}
            if loss is not None:
                post["loss"] = f"{loss:.4f}"
            if samples_per_s:
                post["samples/s"] = f"{samples_per_s:.0f}"
            self._bar.set_postfix(post, refresh=True)
            return
        elapsed = time.time() - self._t0
        rate = (step - self._s0) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        log.info(
            "step %d/%d  loss %s  %.1f samples/s  eta %.0fs",
            step, self.total, f"{loss:.4f}" if loss is not None else "-", samples_per_s or 0.0, eta,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._jsonl is not None:
            os.close(self._jsonl)
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()


def truncate_metrics(path: Path, step: int) -> None:
    """A resumed run continues after ``step``: drop what the interrupted segment logged after it, so
    every step appears once (lines at ``step`` itself stay: they were logged before the checkpoint)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:  # a line cut short by the crash
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    tmp.replace(path)
