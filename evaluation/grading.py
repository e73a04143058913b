"""Genant grading from RHLV features with a linear SVM (docs/design.md, 'SVM grading').

Protocol (the reference implementation's): the vertebrae of the ``train`` and
``test`` splits form the cross-validation pool; stratified 5-fold CV splits the
pool, each fold's model is trained on its four training parts and scored on the
whole ``val`` split. Features are standardised inside each fold (the scaler is
fitted on the fold's training rows only), the classifier is a linear SVC with
balanced class weights. All indexing is positional (numpy arrays), so the rows a
fold trains on are exactly the rows the splitter chose.

``GradingSettings.protocol == "reference"`` reproduces the published code: folds
in table order (unshuffled StratifiedKFold) and one scaler fitted on the whole
train+test pool. Its label-based Series indexing of the fold rows is not
reproduced (a bug): it agrees with positional indexing whenever the pool rows come
first in the table and raises otherwise.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from evaluation.rhlv import RHLV_FEATURES
from util.protocol import DEFAULT_PROTOCOL, check_protocol
from util.settings import FromOptions, option_values

POOL_SPLITS = ("train", "test")
SCORE_SPLIT = "val"
METRIC_KEYS = ("macro_precision", "macro_recall", "macro_f1", "accuracy")
CORONAL_SUFFIX = " (coronal)"
REQUIRED_COLUMNS = ("Vertebra", "Label", "Dataset", *RHLV_FEATURES)


class GradingError(ValueError):
    """Input that cannot be graded (missing column, empty class or split); the message says which."""


class GradingWarning(UserWarning):
    """Input that can be graded but weakly (e.g. a class too small for every fold)."""


@dataclass(frozen=True)
class GradingSettings(FromOptions):
    """How folds are made and features scaled; built once from the flags (:meth:`from_options`)."""

    n_splits: int = 5
    seed: int = 0  # seed of the fold shuffling
    shuffle_folds: bool = True  # False: folds in table order, as the published code
    scaler_per_fold: bool = True  # False: one scaler fitted on the whole pool, as the published code

    @classmethod
    def for_protocol(cls, protocol: str = DEFAULT_PROTOCOL, n_splits: int | None = None,
                     seed: int | None = None) -> GradingSettings:
        """healthivert: shuffled folds, per-fold scaler; reference: the published code's choices
        (``None``: the field's default)."""
        fixed = check_protocol(protocol) == "healthivert"
        return cls(cls.n_splits if n_splits is None else n_splits, cls.seed if seed is None else seed,
                   shuffle_folds=fixed, scaler_per_fold=fixed)

    @classmethod
    def from_options(cls, options: Any, **overrides: Any) -> GradingSettings:
        """From ``--protocol``, ``--n_splits`` and ``--seed`` (a Namespace or dict; absent: the defaults)."""
        values = option_values(options)
        return cls.for_protocol(values.get("protocol") or DEFAULT_PROTOCOL,
                                overrides.get("n_splits", values.get("n_splits")),
                                overrides.get("seed", values.get("seed")))

    @property
    def protocol(self) -> str:
        """``healthivert``, ``reference``, or ``custom`` for a mix of the two."""
        if self.shuffle_folds and self.scaler_per_fold:
            return "healthivert"
        return "reference" if not (self.shuffle_folds or self.scaler_per_fold) else "custom"


@dataclass(frozen=True)
class GradingData:
    """Positional arrays of the CV pool (train + test) and of the scored split (val)."""

    features: list[str]
    classes: list[int]
    pool_x: np.ndarray  # (n_pool, n_features) float64
    pool_y: np.ndarray  # (n_pool,) int
    pool_keys: np.ndarray  # (n_pool,) vertebra keys
    val_x: np.ndarray
    val_y: np.ndarray
    val_keys: np.ndarray


def _check_columns(table: pd.DataFrame, source: str) -> None:
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise GradingError(f"{source}: missing column(s) {missing}; an RHLV table needs {list(REQUIRED_COLUMNS)}")


def feature_table(rhlv: pd.DataFrame, rhlv_coronal: pd.DataFrame | None = None,
                  sources: tuple[str, str] = ("RHLV table", "coronal RHLV table")) -> tuple[pd.DataFrame, list[str]]:
    """Table with the grading features: Pre/Mid/Post RHLV, plus the coronal three (joined on Vertebra).

    Coronal feature columns are named ``"<column> (coronal)"``. Vertebrae missing from
    one of the two tables are dropped with a :class:`GradingWarning`.
    """
    _check_columns(rhlv, sources[0])
    table = rhlv[list(REQUIRED_COLUMNS)].copy()
    features = list(RHLV_FEATURES)
    if rhlv_coronal is None:
        return table, features
    _check_columns(rhlv_coronal, sources[1])
    coronal = rhlv_coronal[["Vertebra", *RHLV_FEATURES]].rename(
        columns={column: column + CORONAL_SUFFIX for column in RHLV_FEATURES})
    merged = table.merge(coronal, on="Vertebra", how="inner", validate="one_to_one")
    dropped = len(table) + len(coronal) - 2 * len(merged)
    if dropped:
        warnings.warn(f"{dropped} vertebrae are in only one of the sagittal and coronal tables; they are left out",
                      GradingWarning, stacklevel=2)
    return merged, features + [column + CORONAL_SUFFIX for column in RHLV_FEATURES]


def prepare_grading_data(table: pd.DataFrame, features: Sequence[str],
                         n_splits: int = GradingSettings.n_splits) -> GradingData:
    """Split a feature table into the CV pool and the val split, with clear errors and warnings.

    Errors: a missing column, no train/test or no val rows, grades other than 0-3, fewer
    than two grades in the pool, a grade of the table with no train/test vertebra.
    Warning: a grade with fewer than ``n_splits`` train/test vertebrae (folds still run).
    """
    missing = [column for column in ("Vertebra", "Label", "Dataset", *features) if column not in table.columns]
    if missing:
        raise GradingError(f"missing column(s) {missing}")
    incomplete = table[["Label", *features]].isna().any(axis=1)
    if incomplete.any():
        warnings.warn(f"{int(incomplete.sum())} vertebrae without a grade or an RHLV value are left out: "
                      f"{', '.join(map(str, table.loc[incomplete, 'Vertebra'].head(5)))}",
                      GradingWarning, stacklevel=2)
        table = table.loc[~incomplete]
    labels = table["Label"].to_numpy(dtype=np.float64)
    if not np.isin(labels, (0, 1, 2, 3)).all():
        raise GradingError(f"Label holds {sorted(set(labels) - {0, 1, 2, 3})}; Genant grades are 0, 1, 2, 3")
    dataset = table["Dataset"].astype(str).to_numpy()
    in_pool = np.isin(dataset, POOL_SPLITS)
    in_val = dataset == SCORE_SPLIT
    if not in_pool.any():
        raise GradingError(f"no vertebra of the {'/'.join(POOL_SPLITS)} splits to cross-validate on")
    if not in_val.any():
        raise GradingError(f"no vertebra of the {SCORE_SPLIT} split to score on")
    x = table[list(features)].to_numpy(dtype=np.float64)
    y = labels.astype(int)
    keys = table["Vertebra"].astype(str).to_numpy()
    classes = sorted(set(y[in_pool | in_val].tolist()))
    pool_counts = {grade: int(np.count_nonzero(y[in_pool] == grade)) for grade in classes}
    empty = [grade for grade, count in pool_counts.items() if count == 0]
    if empty:
        raise GradingError(f"grade(s) {empty} occur in {SCORE_SPLIT} but have no {'/'.join(POOL_SPLITS)} vertebra; "
                           "the classifier cannot learn them")
    if len(classes) < 2:
        raise GradingError(f"only grade {classes} present; grading needs at least two grades")
    small = {grade: count for grade, count in pool_counts.items() if count < n_splits}
    if small:
        warnings.warn(f"grade(s) {small} (grade: count) have fewer than {n_splits} train/test vertebrae, so some "
                      f"folds train or test without them; their scores are unreliable", GradingWarning, stacklevel=2)
    return GradingData(list(features), classes, x[in_pool], y[in_pool], keys[in_pool], x[in_val], y[in_val],
                       keys[in_val])


def grading_folds(pool_y: np.ndarray, n_splits: int = GradingSettings.n_splits, seed: int = GradingSettings.seed,
                  shuffle: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds of the pool: (training rows, held-out rows) as positional indices.

    ``shuffle`` False folds the rows in table order (``seed`` unused), as the published code does.
    """
    if n_splits < 2:
        raise GradingError(f"n_splits {n_splits}: cross-validation needs at least 2 folds")
    if len(pool_y) < n_splits:
        raise GradingError(f"{len(pool_y)} train/test vertebrae cannot make {n_splits} folds")
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=shuffle, random_state=seed if shuffle else None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        try:
            return [(train, heldout) for train, heldout in splitter.split(np.zeros((len(pool_y), 1)), pool_y)]
        except ValueError as err:
            raise GradingError(f"cannot make {n_splits} stratified folds: {err}") from None


def make_classifier(scale: bool = True) -> object:
    """Standardisation (``scale``) + linear SVC with balanced class weights (docs/design.md, 'SVM grading')."""
    svc = SVC(kernel="linear", class_weight="balanced")
    return make_pipeline(StandardScaler(), svc) if scale else svc


def score_predictions(true: np.ndarray, predicted: np.ndarray, classes: Sequence[int]) -> dict:
    """Macro precision/recall/F1 (over the grades present in ``true`` or ``predicted``), accuracy,
    per-class scores and the confusion matrix (rows true, columns predicted, in ``classes`` order)."""
    precision, recall, f1, _ = precision_recall_fscore_support(true, predicted, average="macro", zero_division=0)
    per_p, per_r, per_f, support = precision_recall_fscore_support(true, predicted, labels=list(classes),
                                                                   zero_division=0)
    return {
        "macro_precision": float(precision), "macro_recall": float(recall), "macro_f1": float(f1),
        "accuracy": float(accuracy_score(true, predicted)),
        "per_class": {str(grade): {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for grade, p, r, f, s in zip(classes, per_p, per_r, per_f, support)},
        "confusion_matrix": confusion_matrix(true, predicted, labels=list(classes)).tolist(),
    }


def evaluate_grading(data: GradingData, n_splits: int = GradingSettings.n_splits, seed: int = GradingSettings.seed,
                     protocol: str = DEFAULT_PROTOCOL,
                     settings: GradingSettings | None = None) -> dict:
    """Run the fold protocol; returns the ``grading.json`` content (the keys of docs/design.md, 'grading.json', plus
    details).

    ``settings`` (when given) replaces ``n_splits``, ``seed`` and ``protocol``. Each fold
    records its positional training rows (``train_positions``) and its predictions on
    val (``val_predictions``, in table order).
    """
    if settings is None:
        settings = GradingSettings.for_protocol(protocol, n_splits, seed)
    n_splits, seed = settings.n_splits, settings.seed
    pool_x, val_x = data.pool_x, data.val_x
    if not settings.scaler_per_fold:
        scaler = StandardScaler().fit(pool_x)
        pool_x, val_x = scaler.transform(pool_x), scaler.transform(val_x)
    folds = []
    for index, (train, heldout) in enumerate(grading_folds(data.pool_y, n_splits, seed, settings.shuffle_folds)):
        classifier = make_classifier(scale=settings.scaler_per_fold)
        classifier.fit(pool_x[train], data.pool_y[train])
        predicted = classifier.predict(val_x)
        scores = score_predictions(data.val_y, predicted, data.classes)
        folds.append({"fold": index + 1, "n_train": int(train.size), "n_val": int(data.val_y.size),
                      "heldout_vertebrae": data.pool_keys[heldout].tolist(), "train_positions": train.tolist(),
                      "val_predictions": predicted.tolist(), **scores})
    return {
        **fold_summary(folds, data.classes), "features": data.features, "n_pool": int(data.pool_y.size),
        "n_val": int(data.val_y.size), "n_splits": n_splits, "seed": seed, "protocol": settings.protocol,
        "val_labels": data.val_y.tolist(),
        "pool_class_counts": {str(g): int(np.count_nonzero(data.pool_y == g)) for g in data.classes},
        "val_class_counts": {str(g): int(np.count_nonzero(data.val_y == g)) for g in data.classes},
    }


def fold_summary(folds: list[dict], classes: Sequence[int]) -> dict:
    """``folds`` (each with ``score_predictions``' keys) and their mean, variance, per-class mean scores
    and summed confusion matrix: the common part of every grading report."""
    mean = {key: float(np.mean([fold[key] for fold in folds])) for key in METRIC_KEYS}
    variance = {key: float(np.var([fold[key] for fold in folds])) for key in METRIC_KEYS}
    per_class_mean = {str(grade): {metric: float(np.mean([fold["per_class"][str(grade)][metric] for fold in folds]))
                                   for metric in ("precision", "recall", "f1")}
                      for grade in classes}
    return {"folds": folds, "mean": mean, "variance": variance, "per_class_mean": per_class_mean,
            "confusion_matrix_total": np.sum([fold["confusion_matrix"] for fold in folds], axis=0).tolist(),
            "classes": list(classes)}


PREDICTION_COLUMNS = ("Vertebra", "Label", "Dataset", "Fold", "Predicted")


def score_prediction_table(table: pd.DataFrame, source: str = "prediction table",
                           features: Sequence[str] = ("classifier predictions",),
                           pool_class_counts: dict[str, int] | None = None,
                           fold_train_sizes: dict[int, int] | None = None) -> dict:
    """Grading report (``grading.json`` keys) of a classifier's own predictions: one row per (fold,
    vertebra) with columns ``Vertebra, Label, Dataset, Fold, Predicted``; each fold is scored on its
    ``val`` rows with :func:`score_predictions`, as ``evaluate_grading`` scores the SVM's folds.
    ``pool_class_counts`` and ``fold_train_sizes`` (fold -> vertebrae trained on) describe the training."""
    missing = [column for column in PREDICTION_COLUMNS if column not in table.columns]
    if missing:
        raise GradingError(f"{source}: missing column(s) {missing}; "
                           f"a prediction table needs {list(PREDICTION_COLUMNS)}")
    val = table[table["Dataset"].astype(str) == SCORE_SPLIT]
    if val.empty:
        raise GradingError(f"{source}: no row of the {SCORE_SPLIT} split to score")
    truth, predicted = val["Label"].to_numpy(dtype=int), val["Predicted"].to_numpy(dtype=int)
    if not np.isin(np.concatenate([truth, predicted]), (0, 1, 2, 3)).all():
        raise GradingError(f"{source}: Label/Predicted hold values other than the Genant grades 0-3")
    classes = sorted(set(truth.tolist()) | set(predicted.tolist()))
    folds = []
    for fold, rows in val.groupby("Fold", sort=True):
        scores = score_predictions(rows["Label"].to_numpy(dtype=int), rows["Predicted"].to_numpy(dtype=int), classes)
        folds.append({"fold": int(fold), "n_train": int((fold_train_sizes or {}).get(int(fold), 0)),
                      "n_val": int(len(rows)), **scores})
    first = val[val["Fold"] == val["Fold"].min()]
    pool_class_counts = dict(pool_class_counts or {})
    return {**fold_summary(folds, classes), "features": list(features), "n_pool": sum(pool_class_counts.values()),
            "pool_class_counts": pool_class_counts, "n_val": int(len(first)), "n_splits": len(folds),
            "val_class_counts": {str(g): int(np.count_nonzero(first["Label"].to_numpy(dtype=int) == g))
                                 for g in classes}}


def grading_summary(report: dict) -> str:
    """Human-readable text of a grading report (per fold, mean +/- variance, per class)."""
    classes = report["classes"]
    lines = [f"features: {', '.join(report['features'])}; protocol: {report.get('protocol', 'healthivert')}",
             f"CV pool (train+test): {report['n_pool']} vertebrae {report['pool_class_counts']}; "
             f"scored on val: {report['n_val']} vertebrae {report['val_class_counts']}", ""]
    for fold in report["folds"]:
        lines.append(f"Fold {fold['fold']} (trained on {fold['n_train']}): "
                     + ", ".join(f"{key} {fold[key]:.3f}" for key in METRIC_KEYS))
        lines.append(f"  confusion matrix (rows true grade {classes}, columns predicted):")
        lines.extend(f"    {row}" for row in fold["confusion_matrix"])
    lines.append("")
    lines.append("Mean over folds (variance):")
    lines.extend(f"  {key}: {report['mean'][key]:.4f} ({report['variance'][key]:.6f})" for key in METRIC_KEYS)
    lines.append("Per grade (mean over folds): precision / recall / F1")
    lines.extend(f"  grade {grade}: {scores['precision']:.3f} / {scores['recall']:.3f} / {scores['f1']:.3f}"
                 for grade, scores in report["per_class_mean"].items())
    return "\n".join(lines) + "\n"
