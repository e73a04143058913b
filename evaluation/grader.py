"""A fitted Genant grader: train once on a labelled RHLV table, save, grade new tables without labels.

The model is the cross-validation's (``evaluation.grading.make_classifier``: standardisation and a
linear SVC with balanced class weights) fitted on the whole train+test pool. It is stored with
``skops`` (no pickle: loading refuses any type that is not a plain scikit-learn/NumPy one) together
with the feature names, the grades it knows, the protocol and the scikit-learn version it was fitted
with; loading checks the format and warns when the installed scikit-learn differs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn

from evaluation.grading import GradingData, GradingError, GradingWarning, make_classifier
from util.fileio import atomic_path

GRADER_FORMAT = "healthivert-grader"
GRADER_VERSION = 1
SCORE_PREFIX = "score_grade_"


@dataclass
class Grader:
    """A fitted pipeline and what it expects: feature column names (in order) and the grades it predicts."""

    model: Any
    features: list[str]
    classes: list[int]
    protocol: str
    n_train: int
    sklearn_version: str = sklearn.__version__


def fit_grader(data: GradingData, protocol: str = "healthivert") -> Grader:
    """Fit the CV's classifier on the whole train+test pool of ``data``."""
    model = make_classifier()
    model.fit(data.pool_x, data.pool_y)
    return Grader(model, list(data.features), [int(c) for c in model.classes_], protocol, int(data.pool_y.size))


def save_grader(grader: Grader, path: str | Path) -> Path:
    """Write the grader with ``skops`` (atomic)."""
    import skops.io

    payload = {"format": GRADER_FORMAT, "version": GRADER_VERSION, "model": grader.model,
               "features": list(grader.features), "classes": list(grader.classes), "protocol": grader.protocol,
               "n_train": grader.n_train, "sklearn_version": grader.sklearn_version}
    path = Path(path)
    with atomic_path(path) as temporary:
        skops.io.dump(payload, temporary)
    return path


def load_grader(path: str | Path) -> Grader:
    """Read a grader written by :func:`save_grader`; ``GradingError`` naming the file when it is not one."""
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    path = Path(path)
    if not path.is_file():
        raise GradingError(f"{path}: grader file not found (write one with evaluation/SVM_grading.py --save_grader)")
    try:
        payload = skops.io.load(path)
    except UntrustedTypesFoundException as err:
        raise GradingError(f"{path}: grader holds types that are not plain scikit-learn objects ({err})") from None
    except Exception as err:  # skops raises zipfile/json/key errors for foreign files
        raise GradingError(f"{path}: not a grader file ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or payload.get("format") != GRADER_FORMAT:
        raise GradingError(f"{path}: not a {GRADER_FORMAT} file")
    if int(payload.get("version", 0)) > GRADER_VERSION:
        raise GradingError(f"{path}: grader format version {payload['version']} is newer than this code's "
                           f"{GRADER_VERSION}")
    if payload["sklearn_version"] != sklearn.__version__:
        warnings.warn(f"{path}: fitted with scikit-learn {payload['sklearn_version']}, running "
                      f"{sklearn.__version__}; predictions may differ", GradingWarning, stacklevel=2)
    return Grader(payload["model"], list(payload["features"]), [int(c) for c in payload["classes"]],
                  str(payload["protocol"]), int(payload["n_train"]), str(payload["sklearn_version"]))


def grade_features(grader: Grader, table: pd.DataFrame, source: str = "RHLV table") -> pd.DataFrame:
    """Predicted grade and per-grade scores (``decision_function``, one-vs-rest) of every row with all features.

    Returns ``Vertebra`` (when present), ``Predicted grade`` and ``score_grade_<g>`` per grade; rows
    missing a feature get no prediction (NaN). Raises ``GradingError`` for a missing feature column.
    """
    missing = [column for column in grader.features if column not in table.columns]
    if missing:
        raise GradingError(f"{source}: missing feature column(s) {missing}; the grader needs {grader.features}")
    x = table[grader.features].to_numpy(dtype=np.float64)
    complete = np.isfinite(x).all(axis=1)
    predicted = np.full(len(table), np.nan)
    scores = np.full((len(table), len(grader.classes)), np.nan)
    if complete.any():
        predicted[complete] = grader.model.predict(x[complete])
        decision = np.asarray(grader.model.decision_function(x[complete]), dtype=np.float64)
        if decision.ndim == 1:  # two grades: one signed score for the second
            decision = np.stack([-decision, decision], axis=1)
        scores[complete] = decision
    out = pd.DataFrame({"Predicted grade": predicted}, index=table.index)
    if "Vertebra" in table.columns:
        out.insert(0, "Vertebra", table["Vertebra"].to_numpy())
    for index, grade in enumerate(grader.classes):
        out[f"{SCORE_PREFIX}{grade}"] = scores[:, index]
    return out
