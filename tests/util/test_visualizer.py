"""util/visualizer.py: what the training logs write (CSV rows, TensorBoard scalars, PNGs, the HTML page),
resume truncation, and visdom staying optional."""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from util.visualizer import CsvLog, Visualizer, VisualizerSettings, tensor_to_image


def options(tmp_path: Path, **overrides) -> argparse.Namespace:
    values = {"checkpoints_dir": str(tmp_path), "name": "exp", "no_tensorboard": True, "no_html": False,
              "use_visdom": False, "display_ncols": 2}
    return argparse.Namespace(**{**values, **overrides})


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_tensor_to_image_maps_minus_one_one_to_bytes_and_keeps_the_first_sample() -> None:
    grey = torch.tensor([[[[-1.0, 0.0], [1.0, 3.0]]], [[[0.5, 0.5], [0.5, 0.5]]]])  # (B=2, C=1, H=2, W=2)
    assert tensor_to_image(grey).tolist() == [[0, 128], [255, 255]]  # (x + 1) * 127.5, rounded, clipped
    rgb = torch.stack([torch.full((2, 3), -1.0), torch.zeros(2, 3), torch.ones(2, 3)])  # (C=3, H=2, W=3)
    image = tensor_to_image(rgb)
    assert image.shape == (2, 3, 3) and image.dtype == np.uint8 and image[0, 0].tolist() == [0, 128, 255]


def test_losses_and_validation_go_to_their_csv_logs(tmp_path: Path) -> None:
    visualizer = Visualizer(options(tmp_path))
    visualizer.log_losses(1, 4, 4, OrderedDict(G_L1=0.5, D_real=0.25), lr=2e-4, iter_time=0.125, data_time=0.0625)
    visualizer.log_losses(1, 8, 8, OrderedDict(G_L1=0.375, D_real=0.125), lr=2e-4, iter_time=0.1, data_time=0.05)
    visualizer.log_validation(1, 8, {"psnr": 31.5, "ssim": 0.875})
    losses = rows(tmp_path / "exp" / "loss_log.csv")
    assert list(losses[0]) == ["time", "epoch", "epoch_iter", "total_iters", "lr", "iter_time_s", "data_time_s",
                               "G_L1", "D_real"]
    assert [(r["total_iters"], float(r["G_L1"]), float(r["D_real"]), r["lr"]) for r in losses] == [
        ("4", 0.5, 0.25, "0.0002"), ("8", 0.375, 0.125, "0.0002")]
    assert (losses[0]["iter_time_s"], losses[0]["data_time_s"]) == ("0.1250", "0.0625")
    validation = rows(tmp_path / "exp" / "val_log.csv")
    assert [(r["epoch"], r["total_iters"], float(r["psnr"]), float(r["ssim"])) for r in validation] == [
        ("1", "8", 31.5, 0.875)]


def test_resume_keeps_the_rows_up_to_the_checkpoint_and_a_new_run_starts_empty(tmp_path: Path) -> None:
    first = Visualizer(options(tmp_path))
    for step in (4, 8, 12):
        first.log_losses(1, step, step, OrderedDict(G_L1=step / 100), lr=1e-3, iter_time=0.0, data_time=0.0)
        first.log_validation(1, step, {"psnr": float(step)})
    Visualizer(options(tmp_path), resume_iters=8)
    assert [r["total_iters"] for r in rows(tmp_path / "exp" / "loss_log.csv")] == ["4", "8"]
    assert [r["total_iters"] for r in rows(tmp_path / "exp" / "val_log.csv")] == ["4", "8"]
    Visualizer(options(tmp_path))
    assert not (tmp_path / "exp" / "loss_log.csv").exists() and not (tmp_path / "exp" / "val_log.csv").exists()


def test_csv_log_ignores_unknown_keys_after_its_header_and_leaves_missing_ones_empty(tmp_path: Path) -> None:
    log = CsvLog(tmp_path / "log.csv", ["total_iters"])
    log.append({"total_iters": 1, "a": 1.5})
    log.append({"total_iters": 2, "b": 9})
    log.append({"a": 2.5})
    assert rows(tmp_path / "log.csv") == [{"total_iters": "1", "a": "1.5"}, {"total_iters": "2", "a": ""},
                                          {"total_iters": "", "a": "2.5"}]


def test_visuals_become_pngs_and_an_html_page_newest_first(tmp_path: Path) -> None:
    visualizer = Visualizer(options(tmp_path))
    visuals = OrderedDict((name, torch.full((1, 1, 4, 6), value)) for name, value in
                          (("real_ct", -1.0), ("fake_ct", 0.0), ("mask", 1.0)))
    visualizer.display_visuals(visuals, epoch=1, total_iters=10)
    visualizer.display_visuals(visuals, epoch=2, total_iters=20)
    images = tmp_path / "exp" / "web" / "images"
    names = sorted(p.name for p in images.iterdir())
    assert names == [f"epoch{e:04d}_iter{i:08d}_{k:02d}_{n}.png" for e, i in ((1, 10), (2, 20))
                     for k, n in enumerate(("real_ct", "fake_ct", "mask"))]
    with Image.open(images / "epoch0002_iter00000020_01_fake_ct.png") as png:
        assert png.size == (6, 4) and np.asarray(png).tolist() == [[128] * 6] * 4
    page = (tmp_path / "exp" / "web" / "index.html").read_text(encoding="utf-8")
    assert page.index("<h3>epoch0002 iter00000020</h3>") < page.index("<h3>epoch0001 iter00000010</h3>")
    newest = page[page.index("epoch0002 iter00000020"): page.index("epoch0001 iter00000010")]
    assert newest.count("<table") == 2  # --display_ncols 2: three visuals in rows of 2 and 1
    assert newest.count('href="images/epoch0002_iter00000020_') == 3 and ">fake_ct</td>" in newest
    assert re.search(r"<meta http-equiv=[\"']refresh[\"'] content=[\"']60[\"']>", page)


def test_no_html_writes_no_images(tmp_path: Path) -> None:
    visualizer = Visualizer(options(tmp_path, no_html=True))
    visualizer.display_visuals(OrderedDict(fake=torch.zeros(1, 1, 2, 2)), epoch=1, total_iters=1)
    assert not (tmp_path / "exp" / "web").exists()


def test_use_visdom_without_visdom_warns_and_keeps_logging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "visdom", None)  # import visdom raises ImportError
    with pytest.warns(UserWarning, match="visdom is not installed"):
        visualizer = Visualizer(options(tmp_path, use_visdom=True))
    assert visualizer.visdom is None
    visualizer.log_losses(1, 1, 1, OrderedDict(G=1.0), lr=1.0, iter_time=0.0, data_time=0.0)
    assert len(rows(tmp_path / "exp" / "loss_log.csv")) == 1


def test_tensorboard_receives_the_losses_lr_and_validation(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    visualizer = Visualizer(options(tmp_path, no_tensorboard=False))
    visualizer.log_losses(1, 5, 5, OrderedDict(G_L1=0.5), lr=0.01, iter_time=0.0, data_time=0.0)
    visualizer.log_validation(1, 5, {"psnr": 30.0})
    visualizer.close()
    events = EventAccumulator(str(tmp_path / "exp" / "tensorboard"))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert scalars == {"loss/G_L1": [(5, 0.5)], "lr": [(5, pytest.approx(0.01))], "val/psnr": [(5, 30.0)]}


def test_visualizer_settings_take_the_training_flags_and_absent_ones_keep_their_default(tmp_path: Path) -> None:
    from options.train_options import TrainOptions

    defaults = VisualizerSettings.from_options(TrainOptions().gather_options(["--dataroot", "."]))
    assert defaults == VisualizerSettings("./checkpoints", "HealthiVert_experiment", False, False, 4, False,
                                          "http://localhost", 8097, "main")
    given = VisualizerSettings.from_options(TrainOptions().gather_options(
        ["--dataroot", ".", "--checkpoints_dir", str(tmp_path), "--name", "run", "--no_html", "--no_tensorboard",
         "--display_ncols", "3", "--use_visdom", "--display_port", "9000", "--display_env", "e"]))
    assert (given.folder, given.no_html, given.no_tensorboard, given.display_ncols) == (tmp_path / "run", True, True, 3)
    assert (given.use_visdom, given.display_port, given.display_env) == (True, 9000, "e")
    assert VisualizerSettings.from_options({"checkpoints_dir": "c", "name": "n"}) == VisualizerSettings("c", "n")
    with pytest.raises(ValueError, match="--name"):
        VisualizerSettings.from_options({"checkpoints_dir": "c"})
    with pytest.raises(ValueError, match="--display_ncols 0"):
        VisualizerSettings("c", "n", display_ncols=0)
