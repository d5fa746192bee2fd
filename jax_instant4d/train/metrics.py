"""Metrics on process 0: TensorBoard event files (tensorboardX), a JSON-lines copy of every scalar,
image grids, and the console progress bar. Other processes get writers that do nothing."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from jaxtyping import Float, UInt8

GRID_COLUMNS = ("source", "driving", "teacher", "ours", "static")
GRID_LABELS = {"source": "source", "driving": "driving", "teacher": "teacher", "ours": "ours",
               "static": "ours, undriven"}


def image_grid(columns: Mapping[str, np.ndarray], order: Sequence[str] = GRID_COLUMNS,
               pad: int = 2, min_size: int = 0, labels: bool = False) -> UInt8[np.ndarray, "H W 3"]:
    """Rows = examples, columns = ``order`` (each [N, H, W, 3] in [0, 1]); white separators. Cells are
    enlarged by an integer factor (nearest neighbour) to at least ``min_size`` pixels; ``labels`` adds a
    header row naming the columns."""
    names = [k for k in order if k in columns]
    cols = [np.clip(np.asarray(columns[k], np.float32), 0.0, 1.0) for k in names]
    n, h, w = cols[0].shape[:3]
    f = max(1, -(-int(min_size) // h)) if min_size else 1
    h, w = h * f, w * f
    head = 16 if labels else 0
    grid = np.ones((head + n * (h + pad) + pad, len(cols) * (w + pad) + pad, 3), np.float32)
    for j, col in enumerate(cols):
        for i in range(n):
            img = col[i]
            if img.shape[:2] != (h, w):  # nearest-neighbour to the common size
                yy = np.arange(h) * img.shape[0] // h
                xx = np.arange(w) * img.shape[1] // w
                img = img[yy][:, xx]
            y0, x0 = head + pad + i * (h + pad), pad + j * (w + pad)
            grid[y0:y0 + h, x0:x0 + w] = img[..., :3]
    out = (grid * 255.0 + 0.5).astype(np.uint8)
    if labels:
        from PIL import Image, ImageDraw, ImageFont

        im = Image.fromarray(out)
        draw = ImageDraw.Draw(im)
        font = ImageFont.load_default()
        for j, k in enumerate(names):
            draw.text((pad + j * (w + pad) + 3, 2), GRID_LABELS.get(k, k), fill=(0, 0, 0), font=font)
        out = np.asarray(im)
    return out


def save_png(image: UInt8[np.ndarray, "H W 3"], path: str | Path) -> None:
    from PIL import Image

    Image.fromarray(np.asarray(image)).save(str(path))


def _import_summary_writer():
    """tensorboardX's writer, imported without pulling in PyTorch: tensorboardX imports torch when it
    is installed (seconds of start-up) only to accept torch tensors, which we never pass."""
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError for the duration
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def truncate_metrics(path: str | Path, last_step: int) -> int:
    """Drops the records of ``metrics.jsonl`` after ``last_step`` (and lines cut by a kill), so a run
    resumed from the checkpoint of ``last_step`` logs each later step once. Returns how many records
    were dropped. The file is replaced atomically."""
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            keep = int(rec["step"]) <= last_step
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(ln + "\n" for ln in kept))
        tmp.replace(path)
    return dropped


class MetricWriter:
    """Scalars and images to TensorBoard and ``metrics.jsonl`` in ``workdir`` (process 0 only).

    ``resume_step``: the step the run starts from; records of later steps (written by the interrupted
    run after its last checkpoint) are removed from ``metrics.jsonl`` first."""

    def __init__(self, workdir: str | Path, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self.workdir = Path(workdir)
        self._tb = None
        self._jsonl = None
        if enabled:
            SummaryWriter = _import_summary_writer()
            self.workdir.mkdir(parents=True, exist_ok=True)
            if resume_step is not None:
                truncate_metrics(self.workdir / "metrics.jsonl", int(resume_step))
            self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
            self._jsonl = open(self.workdir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items()}
        for k, v in clean.items():
            self._tb.add_scalar(f"{prefix}/{k}", v, step)
        record = {"step": int(step), "kind": prefix, "time": time.time(),
                  **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def image(self, step: int, name: str, image: UInt8[np.ndarray, "H W 3"] | Float[np.ndarray, "H W 3"]) -> None:
        if self.enabled:
            self._tb.add_image(name, np.asarray(image), step, dataformats="HWC")

    def text(self, step: int, name: str, text: str) -> None:
        if self.enabled:
            self._tb.add_text(name, text, step)

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            self.enabled = False


def read_metrics(workdir: str | Path, kind: str = "train") -> dict[int, dict[str, float]]:
    """The last record of each step of ``kind`` in ``workdir/metrics.jsonl`` (a resumed run rewrites
    the steps after its checkpoint; the newest wins)."""
    out: dict[int, dict[str, float]] = {}
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if rec.get("kind") == kind:
            out[int(rec["step"])] = rec
    return out


def format_duration(seconds: float) -> str:
    """``HH:MM:SS``, with ``Nd`` in front from one day on (an ETA of days must not wrap around)."""
    days, rest = divmod(int(round(seconds)), 86400)
    return (f"{days}d " if days else "") + time.strftime("%H:%M:%S", time.gmtime(rest))


class Progress:
    """Console progress bar with loss and ETA (tqdm on a terminal, plain lines otherwise).

    The rate and ETA count the steps after the last :meth:`restart_clock` (the loop calls it after a
    step that compiled), so compilation does not make the ETA of a long run look short or long."""

    def __init__(self, total: int, initial: int, enabled: bool, every: int = 10, messages: bool = True):
        self.enabled, self.every, self.total = enabled, max(int(every), 1), total
        self.messages = messages  # write() prints even without a bar
        self._bar = None
        self._t0, self._s0 = time.time(), initial
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, dynamic_ncols=True, desc="train")

    def update(self, step: int, loss: float, extra: str = "") -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix_str(f"loss {loss:.4f}{' ' + extra if extra else ''}", refresh=False)
            self._bar.refresh()
            return
        if step % self.every == 0 or step == self.total:
            done = step - self._s0
            rate = done / max(time.time() - self._t0, 1e-9)
            eta = (self.total - step) / rate if rate > 0 else float("inf")
            eta_s = format_duration(eta) if math.isfinite(eta) else "?"
            rate_s = f"{rate:.2f} it/s" if done > 0 else "? it/s"
            print(f"step {step}/{self.total}  loss {loss:.4f}  {extra}  {rate_s}  ETA {eta_s}",
                  file=sys.stderr, flush=True)

    def restart_clock(self, step: int) -> None:
        """Counts rate and ETA from ``step`` on (now)."""
        self._t0, self._s0 = time.time(), int(step)
        if self._bar is not None:
            self._bar.n = self._bar.last_print_n = self._bar.initial = int(step)
            self._bar.start_t = self._bar.last_print_t = self._bar._time()  # noqa: SLF001 (tqdm's clock)

    def write(self, message: str) -> None:
        if not self.messages:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
