"""Training logs: a CSV loss log, TensorBoard scalars and images, an HTML page of sample visuals, visdom.

Everything goes under ``<checkpoints_dir>/<name>/``: ``loss_log.csv``, ``val_log.csv``,
``tensorboard/`` (events), ``web/index.html`` (+ ``web/images/``). visdom is used only with
``--use_visdom`` and when the package is installed. Only rank 0 creates a visualizer.
"""

from __future__ import annotations

import argparse
import csv
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from util.fileio import atomic_write
from util.html import HTML
from util.settings import FromOptions

MAX_HTML_STEPS = 50  # the HTML page shows the newest this many saved steps


def tensor_to_image(image: torch.Tensor) -> np.ndarray:
    """First sample of a (B,C,H,W) or (C,H,W) tensor in [-1, 1] as uint8 (H,W) grey or (H,W,3) RGB."""
    array = image.detach().float().cpu()
    if array.dim() == 4:
        array = array[0]
    array = ((array.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).numpy()
    return array[0] if array.shape[0] == 1 else np.transpose(array[:3], (1, 2, 0))


def save_png(image: np.ndarray, path: Path) -> None:
    """Write a uint8 image as PNG atomically."""
    from PIL import Image

    with atomic_write(path, "wb") as handle:
        Image.fromarray(image).save(handle, format="PNG")


class CsvLog:
    """Append-only CSV with a fixed header; on resume, rows past the checkpoint are dropped."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns

    def truncate_after(self, total_iters: int) -> None:
        """Keep only rows with ``total_iters`` <= the given value (the resumed checkpoint's)."""
        if not self.path.is_file():
            return
        with open(self.path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        if not rows:
            return
        header, body = rows[0], rows[1:]
        column = header.index("total_iters") if "total_iters" in header else None
        kept = [row for row in body if column is None or int(row[column]) <= total_iters]
        with atomic_write(self.path, newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([header, *kept])
        self.columns = header

    def append(self, row: dict[str, Any]) -> None:
        """Add one row (unknown keys are ignored, missing ones left empty)."""
        new = not self.path.is_file() or self.path.stat().st_size == 0
        if new:
            self.columns = list(self.columns) + [k for k in row if k not in self.columns]
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


@dataclass(frozen=True)
class VisualizerSettings(FromOptions):
    """What the training logs write (docs/design.md, 'Settings and defaults'); the defaults of the logging flags.

    checkpoints_dir / name: the run folder ``<checkpoints_dir>/<name>``; no_html, no_tensorboard: skip the
    HTML page / the TensorBoard events; display_ncols: images per row on the HTML page; use_visdom and
    display_server, display_port, display_env: the visdom connection.
    """

    checkpoints_dir: str
    name: str
    no_html: bool = False
    no_tensorboard: bool = False
    display_ncols: int = 4
    use_visdom: bool = False
    display_server: str = "http://localhost"
    display_port: int = 8097
    display_env: str = "main"

    def __post_init__(self) -> None:
        object.__setattr__(self, "display_ncols", int(self.display_ncols))
        object.__setattr__(self, "display_port", int(self.display_port))
        if self.display_ncols < 1:
            raise ValueError(f"--display_ncols {self.display_ncols}: expected at least 1")

    @property
    def folder(self) -> Path:
        """The run folder that receives the logs."""
        return Path(self.checkpoints_dir) / self.name


class Visualizer:
    """Loss/metric logging and sample visuals for one experiment (rank 0)."""

    def __init__(self, opt: argparse.Namespace, resume_iters: int | None = None) -> None:
        self.settings = VisualizerSettings.from_options(opt)
        self.folder = self.settings.folder
        self.folder.mkdir(parents=True, exist_ok=True)
        base = ["time", "epoch", "epoch_iter", "total_iters", "lr", "iter_time_s", "data_time_s"]
        self.loss_log = CsvLog(self.folder / "loss_log.csv", base)
        self.val_log = CsvLog(self.folder / "val_log.csv", ["time", "epoch", "total_iters"])
        if resume_iters is not None:
            self.loss_log.truncate_after(resume_iters)
            self.val_log.truncate_after(resume_iters)
        else:
            for log in (self.loss_log, self.val_log):
                log.path.unlink(missing_ok=True)
        self.writer = None
        if not self.settings.no_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.folder / "tensorboard"), purge_step=resume_iters)
        self.web_dir = self.folder / "web"
        self.use_html = not self.settings.no_html
        self.visdom = self._connect_visdom() if self.settings.use_visdom else None

    def _connect_visdom(self) -> Any:
        try:
            import visdom
        except ImportError:
            warnings.warn("--use_visdom: visdom is not installed (pip install visdom); continuing without it",
                          stacklevel=3)
            return None
        return visdom.Visdom(server=self.settings.display_server, port=self.settings.display_port,
                             env=self.settings.display_env, raise_exceptions=False)

    def log_losses(self, epoch: int, epoch_iter: int, total_iters: int, losses: OrderedDict[str, float],
                   lr: float, iter_time: float, data_time: float) -> None:
        """One CSV row, TensorBoard scalars and (visdom) plot points."""
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "epoch": epoch, "epoch_iter": epoch_iter,
               "total_iters": total_iters, "lr": f"{lr:.6g}", "iter_time_s": f"{iter_time:.4f}",
               "data_time_s": f"{data_time:.4f}", **{k: repr(float(v)) for k, v in losses.items()}}
        self.loss_log.append(row)
        if self.writer is not None:
            for name, value in losses.items():
                self.writer.add_scalar(f"loss/{name}", value, total_iters)
            self.writer.add_scalar("lr", lr, total_iters)
        if self.visdom is not None:
            for name, value in losses.items():
                self.visdom.line(X=[total_iters], Y=[value], win=f"loss_{name}", update="append",
                                 opts={"title": name})

    def log_validation(self, epoch: int, total_iters: int, metrics: dict[str, float]) -> None:
        """Validation metrics to ``val_log.csv`` and TensorBoard."""
        self.val_log.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "epoch": epoch, "total_iters": total_iters,
                             **{k: repr(float(v)) for k, v in metrics.items()}})
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(f"val/{name}", value, total_iters)

    def display_visuals(self, visuals: OrderedDict[str, torch.Tensor], epoch: int, total_iters: int) -> None:
        """Save the first sample of each visual as PNG, refresh the HTML page, add TensorBoard images."""
        images = OrderedDict((name, tensor_to_image(tensor)) for name, tensor in visuals.items())
        if self.writer is not None:
            for name, image in images.items():
                self.writer.add_image(f"visuals/{name}", image, total_iters,
                                      dataformats="HW" if image.ndim == 2 else "HWC")
        if self.visdom is not None:
            for name, image in images.items():
                chw = image[None] if image.ndim == 2 else np.transpose(image, (2, 0, 1))
                self.visdom.image(chw, win=f"visual_{name}", opts={"title": name})
        if self.use_html:
            stamp = f"epoch{epoch:04d}_iter{total_iters:08d}"
            for index, (name, image) in enumerate(images.items()):
                save_png(image, self.web_dir / "images" / f"{stamp}_{index:02d}_{name}.png")
            self._write_page()

    def _write_page(self) -> None:
        """index.html: newest first, one row of images per saved step (``--display_ncols`` per row)."""
        page = HTML(self.web_dir, f"Experiment {self.settings.name}", refresh=60)
        files = sorted((self.web_dir / "images").glob("epoch*_iter*_*.png"), reverse=True)
        steps: OrderedDict[str, list[Path]] = OrderedDict()
        for path in files:
            stamp = "_".join(path.stem.split("_")[:2])
            steps.setdefault(stamp, []).append(path)
        ncols = self.settings.display_ncols
        for stamp, paths in list(steps.items())[:MAX_HTML_STEPS]:
            page.add_header(stamp.replace("_", " "))
            paths = sorted(paths)
            for start in range(0, len(paths), ncols):
                chunk = paths[start:start + ncols]
                rel = [f"images/{p.name}" for p in chunk]
                page.add_images(rel, ["_".join(p.stem.split("_")[3:]) for p in chunk], rel)
        page.save()

    def close(self) -> None:
        """Flush TensorBoard."""
        if self.writer is not None:
            self.writer.close()
