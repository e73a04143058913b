"""RHLV tables against the phantom truth: per-region errors, Genant grades and their accuracy.

The truth file is described in docs/design.md, 'Phantom truth'.

The phantom generator records, for every vertebra, the true regional height-loss ratios
``loss_by_region`` (anterior, middle, posterior: ``1 - post / pre``), their maximum
``loss_ratio`` and the Genant grade it sets. An RHLV table (``evaluation/RHLV_quantification.py``)
measures the same ratios as ``Pre/Mid/Post RHLV``. This module joins the two on the vertebra
key (``<case>_<label>``) and scores the measurement:

- absolute error of each regional RHLV against the true regional loss ratio;
- absolute error of the largest regional RHLV against ``loss_ratio``;
- the Genant grade read off the largest regional RHLV with Genant's thresholds (no training),
  and its macro-F1 against the true grades.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from data.labels import split_key
from evaluation.genant import ANATOMICAL_REGIONS, genant_grade
from util.fileio import read_json

RHLV_COLUMN_OF_REGION = {"anterior": "Pre RHLV", "middle": "Mid RHLV", "posterior": "Post RHLV"}
GRADES = (0, 1, 2, 3)


def truth_files(raw_root: str | Path) -> list[Path]:
    """The ``<case>_truth.json`` files under ``raw_root/<case>/``, sorted by case."""
    return sorted(Path(raw_root).glob("*/*_truth.json"))


def truth_table(raw_root: str | Path) -> pd.DataFrame:
    """One row per phantom vertebra: ``Vertebra`` key, case, label, name, true grade, morphology,
    ``loss_ratio``, ``loss_<region>`` (fractions), ``adjacent_fracture``, ``truncated``."""
    rows = []
    for path in truth_files(raw_root):
        truth = read_json(path)
        for vertebra in truth["vertebrae"]:
            rows.append({
                "Vertebra": split_key(truth["case"], vertebra["label"]),
                "case": truth["case"],
                "label": int(vertebra["label"]),
                "name": vertebra["name"],
                "true_grade": int(vertebra["grade"]),
                "morphology": vertebra["morphology"],
                "loss_ratio": float(vertebra["loss_ratio"]),
                **{f"loss_{region}": float(vertebra["loss_by_region"][region]) for region in ANATOMICAL_REGIONS},
                "adjacent_fracture": bool(vertebra.get("adjacent_fracture", False)),
                "truncated": bool(vertebra.get("truncated", False)),
            })
    if not rows:
        raise FileNotFoundError(f"{raw_root}: no <case>/<case>_truth.json phantom truth files")
    return pd.DataFrame(rows)


def compare_to_truth(rhlv: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Join an RHLV table with the truth table (inner join on ``Vertebra``) and add, per vertebra,
    ``max_rhlv`` (largest regional RHLV), ``error_<region>`` and ``error_max`` (RHLV minus truth,
    fractions) and ``rhlv_grade`` (Genant grade of ``max_rhlv``)."""
    merged = rhlv.merge(truth, on="Vertebra", how="inner")
    regional = merged[list(RHLV_COLUMN_OF_REGION.values())].to_numpy(dtype=float)
    merged["max_rhlv"] = regional.max(axis=1)
    for region, column in RHLV_COLUMN_OF_REGION.items():
        merged[f"error_{region}"] = merged[column] - merged[f"loss_{region}"]
    merged["error_max"] = merged["max_rhlv"] - merged["loss_ratio"]
    merged["rhlv_grade"] = [genant_grade(value) if math.isfinite(value) else -1 for value in merged["max_rhlv"]]
    return merged


def accuracy_summary(comparison: pd.DataFrame) -> dict[str, Any]:
    """Mean absolute errors (fractions) per region and of the largest region, and the macro-F1 of the
    threshold grades against the true grades (over the grades present in either), for ``comparison`` rows."""
    summary: dict[str, Any] = {"n": int(len(comparison))}
    for region in (*ANATOMICAL_REGIONS, "max"):
        errors = comparison[f"error_{region}"].to_numpy(dtype=float) if len(comparison) else np.array([])
        summary[f"mae_{region}"] = float(np.nanmean(np.abs(errors))) if errors.size else math.nan
    if len(comparison):
        summary["macro_f1_threshold"] = float(f1_score(comparison["true_grade"], comparison["rhlv_grade"],
                                                       average="macro", zero_division=0))
        summary["accuracy_threshold"] = float((comparison["true_grade"] == comparison["rhlv_grade"]).mean())
    else:
        summary["macro_f1_threshold"] = summary["accuracy_threshold"] = math.nan
    return summary


def subsets(comparison: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Named row subsets for reporting: all vertebrae, those with / without a fractured neighbour,
    and the fractured ones (true grade > 0)."""
    return {
        "all": comparison,
        "adjacent fracture": comparison[comparison["adjacent_fracture"]],
        "no adjacent fracture": comparison[~comparison["adjacent_fracture"]],
        "fractured (grade > 0)": comparison[comparison["true_grade"] > 0],
    }


def threshold_confusion(comparison: pd.DataFrame, grades: Sequence[int] = GRADES) -> list[list[int]]:
    """Confusion matrix (rows true grade, columns threshold grade of the largest regional RHLV)."""
    matrix = np.zeros((len(grades), len(grades)), dtype=int)
    index = {grade: i for i, grade in enumerate(grades)}
    for true, predicted in zip(comparison["true_grade"], comparison["rhlv_grade"]):
        if true in index and predicted in index:
            matrix[index[true], index[predicted]] += 1
    return matrix.tolist()



def restrict_to_common(comparisons: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Each method's rows limited to the vertebrae every method measured (a like-for-like comparison:
    the neighbour baseline cannot measure a vertebra without a healthy-looking neighbour)."""
    if not comparisons:
        return {}
    common = set.intersection(*(set(table["Vertebra"]) for table in comparisons.values()))
    return {method: table[table["Vertebra"].isin(common)] for method, table in comparisons.items()}
