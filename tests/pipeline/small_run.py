"""A small finished demo run on disk, written directly (no pipeline step runs): what the report reads.

Three cases (train, val, test) of six synthetic crops each (``tests.synthetic_crops``), a phantom
truth file per case with known regional height losses, attention maps on the crop grid, pseudo-
healthy crops (the originals), both RHLV tables with known values, grading and generation summaries,
a loss log, height-loss map PNGs and one log per step. The report tests build the page from it in
seconds instead of running the demo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from data.crops import load_crop
from data.image_io import save_nifti
from data.labels import split_key, vertebra_name
from pipeline.run import QUICK, DemoPaths, PipelineRun, StepResult
from tests.synthetic_crops import HEIGHTS, write_synthetic_cohort
from util.fileio import write_json

CASES = {"ph000": "train", "ph001": "val", "ph002": "test"}
LABELS = sorted(HEIGHTS)  # VerSe 18..23 (T11..L4)
# (case, label) -> (grade, morphology, regional losses anterior/middle/posterior)
FRACTURES = {("ph001", 20): (3, "wedge", (0.45, 0.25, 0.05)), ("ph002", 21): (2, "crush", (0.3, 0.3, 0.3)),
             ("ph000", 22): (1, "biconcave", (0.05, 0.22, 0.05))}
LOSS_TERMS = {"G_L1": (1.0, 0.5), "G_GAN": (0.8, 0.6)}  # first and last value of each logged term


def rhlv_values(key: str, truth: tuple[float, float, float], offset: float) -> tuple[float, float, float]:
    """Deterministic RHLV of one vertebra: the true loss plus ``offset`` and a per-key wobble."""
    wobble = (sum(map(ord, key)) % 7) / 100.0
    return tuple(round(loss + offset + wobble * sign, 4) for loss, sign in zip(truth, (1, -1, 1)))


def _truth(case: str) -> list[dict]:
    vertebrae = []
    fractured = {label for (c, label) in FRACTURES if c == case}
    for label in LABELS:
        grade, morphology, losses = FRACTURES.get((case, label), (0, "none", (0.0, 0.0, 0.0)))
        regions = dict(zip(("anterior", "middle", "posterior"), losses))
        vertebrae.append({"label": label, "name": vertebra_name(label), "grade": grade, "morphology": morphology,
                          "loss_ratio": max(losses), "loss_by_region": regions,
                          "adjacent_fracture": bool({label - 1, label + 1} & fractured), "truncated": False})
    return vertebrae


def _map_png(path: Path, value: float) -> None:
    figure = Figure(figsize=(1.0, 1.0))
    figure.add_subplot(1, 1, 1).imshow(np.full((4, 4), value), vmin=0.0, vmax=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=20)


def write_small_run(root: Path) -> PipelineRun:
    """Write the run under ``root`` and return its ``PipelineRun`` (every step ``ok``)."""
    paths = DemoPaths(root)
    write_synthetic_cohort(root, cases=dict(CASES), labels=LABELS,
                           grades={split_key(c, lab): g for (c, lab), (g, _, _) in FRACTURES.items()})
    for case in CASES:
        write_json(paths.raw / case / f"{case}_truth.json",
                   {"case": case, "orientation": "LPS", "spacing_mm": [1.0, 1.0, 2.5], "vertebrae": _truth(case)})
    rows = {"HealthiVert-GAN": [], "neighbour baseline": []}
    for case in CASES:
        for vertebra in _truth(case):
            key = split_key(case, vertebra["label"])
            crop = load_crop(paths.dataroot, key)
            target = crop.label_map == crop.label
            cam = np.where(target, 0.9, 0.02).astype(np.float32)  # attention on the target body
            save_nifti(cam, crop.affine, paths.heatmap / f"{key}.nii.gz")
            save_nifti(crop.ct_hu.astype(np.int16), crop.affine, paths.results / "CT_fake" / f"{key}.nii.gz")
            save_nifti(crop.label_map, crop.affine, paths.results / "label_fake" / f"{key}.nii.gz")
            truth = tuple(vertebra["loss_by_region"].values())
            for method, offset in (("HealthiVert-GAN", 0.01), ("neighbour baseline", 0.04)):
                rows[method].append(dict(zip(("Vertebra", "Pre RHLV", "Mid RHLV", "Post RHLV"),
                                             (key, *rhlv_values(key, truth, offset)))))
            _map_png(paths.maps / f"{key}.png", 0.2)
            _map_png(paths.maps / f"{key}_neighbours.png", 0.7)
    pd.DataFrame(rows["HealthiVert-GAN"]).to_csv(paths.rhlv, index=False)
    pd.DataFrame(rows["neighbour baseline"][1:]).to_csv(paths.rhlv_neighbours, index=False)  # one not measured
    for folder, score in ((paths.grading, 0.61), (paths.grading_neighbours, 0.42)):
        keys = ("macro_precision", "macro_recall", "macro_f1", "accuracy")
        write_json(folder / "grading.json", {"mean": {k: score + i / 100 for i, k in enumerate(keys)},
                                             "variance": {k: 0.0012 for k in keys}, "n_pool": 12, "n_val": 6})
        _map_png(folder / "confusion_matrices.png", score)
    write_json(paths.generation_summary, {"mean": {"PSNR": 27.5, "SSIM": 0.8125, "Dice": 0.9375},
                                          "std": {"PSNR": 1.25, "SSIM": 0.0625, "Dice": 0.03125}, "n_vertebrae": 5})
    iterations = np.arange(4, 44, 4)
    log = {"epoch": iterations // 8, "total_iters": iterations}
    log.update({term: np.geomspace(first, last, len(iterations)) for term, (first, last) in LOSS_TERMS.items()})
    paths.loss_log.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(log).to_csv(paths.loss_log, index=False)
    paths.logs.mkdir(parents=True, exist_ok=True)
    steps = []
    for index, (name, wall) in enumerate((("phantoms", 1.5), ("RHLV", 2.25), ("SVM grading", 0.75)), start=1):
        log_path = paths.logs / f"{index:02d}_{name.replace(' ', '_')}.log"
        log_path.write_text(f"$ python {name}.py\n", encoding="utf-8")
        steps.append(StepResult(name, f"python {name}.py --out x", name, 0, 1, 1, wall, wall / 2, str(log_path)))
    return PipelineRun(QUICK, paths, "-1", steps)

