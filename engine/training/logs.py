"""What a training run leaves behind for humans: progress, a CSV, curves, optional TensorBoard.

* ``metrics.csv`` — one row per epoch (epoch, step, lr, train losses, validation metrics, time).
  It is rewritten atomically each epoch with the union of all columns seen so far, and on resume
  rows after the resumed epoch are dropped, so the file always describes one consistent history.
* ``curves.png`` — losses and metrics per epoch (matplotlib, Agg backend: no display needed).
* ``train.log`` — the plain log lines, also printed when stdout is not a terminal (CI, doit).
* ``tb/`` — a TensorBoard event file, only when ``torch.utils.tensorboard`` imports (it needs the
  optional ``tensorboard`` package).
* On a TTY a rich progress bar shows epoch, iteration, loss and ETA.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_bytes

CSV_NAME = "metrics.csv"
CURVES_NAME = "curves.png"
LOG_NAME = "train.log"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class RunLogger:
    """Per-run logging; every method is a no-op when ``enabled`` is false (DDP ranks > 0)."""

    def __init__(
        self,
        run_dir: Path | str,
        *,
        enabled: bool = True,
        tty: bool | None = None,
        log_every: int = 20,
        tensorboard: bool = True,
        name: str = "train",
    ):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.log_every = max(1, int(log_every))
        self.name = name
        self.rows: list[dict[str, Any]] = []
        self._tb: Any = None
        self._progress: Any = None
        self._task_id: Any = None
        self._epoch_start = 0.0
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log_fh = open(self.run_dir / LOG_NAME, "a", encoding="utf-8")  # noqa: SIM115
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))
            except Exception:  # tensorboard not installed: the CSV and PNG still exist
                self._tb = None

    # ---------------------------------------------------------------------------------------
    # plain lines

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {self.name}: {message}"
        self._log_fh.write(line + "\n")
        self._log_fh.flush()
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, flush=True)

    # ---------------------------------------------------------------------------------------
    # history (CSV)

    def load_history(self, up_to_epoch: int) -> None:
        """Reload ``metrics.csv`` on resume, keeping rows of epochs <= ``up_to_epoch``."""
        if not self.enabled:
            return
        path = self.run_dir / CSV_NAME
        self.rows = []
        if not path.is_file():
            return
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                try:
                    epoch = int(row.get("epoch", "0"))
                except ValueError:
                    continue
                if epoch <= up_to_epoch:
                    self.rows.append({k: _parse(v) for k, v in row.items() if v not in ("", None)})
        self._write_csv()

    def _write_csv(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            for key in row:
                if key not in columns:
                    columns.append(key)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        atomic_write_bytes(self.run_dir / CSV_NAME, buf.getvalue().encode("utf-8"))

    def epoch_end(self, row: dict[str, Any]) -> None:
        """Record one epoch: CSV row, TensorBoard scalars, curves, a log line."""
        if not self.enabled:
            return
        self.rows.append(dict(row))
        self._write_csv()
        if self._tb is not None:
            step = int(row.get("step", row.get("epoch", 0)))
            for key, value in row.items():
                if key not in ("epoch", "step") and isinstance(value, int | float):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        try:
            self.plot()
        except Exception as exc:  # a plotting problem must never kill a training run
            self.info(f"could not draw {CURVES_NAME}: {exc}")
        self.info(", ".join(f"{k}={_fmt(v)}" for k, v in row.items()))

    def plot(self) -> Path | None:
        if not self.enabled or not self.rows:
            return None
        # The Agg canvas directly, not pyplot: no global backend switch, no display needed.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        epochs = [r["epoch"] for r in self.rows]
        keys = [k for k in self.rows[-1] if k not in ("epoch", "step", "time_s")]
        loss_keys = [k for k in keys if "loss" in k]
        counts = ("samples", "matched", "gt", "det", "correct", "detected", "skipped_steps")
        metric_keys = [
            k for k in keys if k not in loss_keys and k != "lr" and not k.endswith(counts)
        ]
        panels = [("loss", loss_keys), ("validation", metric_keys), ("learning rate", ["lr"])]
        panels = [(t, ks) for t, ks in panels if ks]
        fig = Figure(figsize=(5 * len(panels), 3.6))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(panels), squeeze=False)
        for ax, (title, ks) in zip(axes[0], panels, strict=True):
            for key in ks:
                ys = [r.get(key, math.nan) for r in self.rows]
                ax.plot(
                    epochs,
                    [float(y) if isinstance(y, int | float) else math.nan for y in ys],
                    marker="o",
                    markersize=2,
                    label=key,
                )
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        path = self.run_dir / CURVES_NAME
        atomic_write_bytes(path, buf.getvalue())
        return path

    # ---------------------------------------------------------------------------------------
    # progress

    def start_epoch(self, epoch: int, epochs: int, iters: int) -> None:
        if not self.enabled:
            return
        self._epoch_start = time.monotonic()
        if self.tty:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            if self._progress is None:
                self._progress = Progress(
                    TextColumn("[bold]{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[loss]}"),
                    TimeRemainingColumn(),
                    transient=True,
                )
                self._progress.start()
            if self._task_id is not None:
                self._progress.remove_task(self._task_id)
            self._task_id = self._progress.add_task(
                f"{self.name} epoch {epoch}/{epochs}", total=iters, loss=""
            )

    def iteration(self, epoch: int, it: int, iters: int, step: int, loss: float, lr: float) -> None:
        if not self.enabled:
            return
        if self._progress is not None and self._task_id is not None:
            self._progress.update(self._task_id, completed=it, loss=f"loss {loss:.4f} lr {lr:.2e}")
            return
        if it % self.log_every == 0 or it == iters:
            elapsed = time.monotonic() - self._epoch_start
            eta = elapsed / max(it, 1) * (iters - it)
            self.info(
                f"epoch {epoch} iter {it}/{iters} step {step} loss {loss:.4f} lr {lr:.3e} "
                f"eta(epoch) {eta:.0f}s"
            )

    def close(self) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._tb is not None:
            self._tb.close()
        self._log_fh.close()


def _parse(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text
