"""The folder layout of the published README, which the step scripts fall back to without flags.

All paths are relative to the working directory, as the published quick-start runs them:
``./dataset/raw/<case>/`` -> ``./dataset/straightened/{CT,label}`` -> ``./Attention/heatmap`` ->
``./checkpoints/HealthiVert_experiment`` -> ``./output/{CT_fake,label_fake}``; the split JSON is
``./vertebra_data.json`` (the published template's place) or ``./dataset/vertebra_data.json``.
"""

from __future__ import annotations

from pathlib import Path

DATAROOT = Path("dataset/straightened")
CAM_DIR = Path("Attention/heatmap")
OUTPUT_DIR = Path("output")
EXPERIMENT_NAME = "HealthiVert_experiment"
CLASSIFIER_NAME = "HealthiVert_classifier"
SPLIT_JSON_CANDIDATES = (Path("vertebra_data.json"), Path("dataset/vertebra_data.json"))


def split_json() -> Path | None:
    """The first of ``./vertebra_data.json`` and ``./dataset/vertebra_data.json`` that exists, else ``None``."""
    return next((path for path in SPLIT_JSON_CANDIDATES if path.is_file()), None)


def is_published_dataroot(dataroot: str | Path) -> bool:
    """Whether ``dataroot`` is ``./dataset/straightened`` of the working directory."""
    return Path(dataroot).resolve() == DATAROOT.resolve()


def cam_dir_for(dataroot: str | Path) -> Path | None:
    """``./Attention/heatmap`` when ``dataroot`` is the published one and that folder exists, else ``None``."""
    return CAM_DIR if is_published_dataroot(dataroot) and CAM_DIR.is_dir() else None
