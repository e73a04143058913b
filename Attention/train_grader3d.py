"""Train the 3D SupCon-SENet Genant grader under the grading protocol and score it with the grading scorer.

One network per stratified fold of the train+test pool (as evaluation/SVM_grading.py), each
predicting the val split; writes <results_dir>/<name>/predictions.csv (Vertebra, Label, Dataset,
Fold, Predicted, P0..P3), <results_dir>/<name>/grading/{grading.json,grading.txt,confusion_matrices.png}
and <checkpoints_dir>/<name>/grader3d_fold<k>.pth.

Example (CPU):
    python Attention/train_grader3d.py --dataroot DIR/straightened --split_json DIR/vertebra_data.json \\
        --name supcon_senet --arch small --gpu_ids -1
"""

import logging
import sys
from pathlib import Path

from Attention.grader3d import parse_grader_options, run_grading_protocol
from evaluation.grading import grading_summary, score_prediction_table
from evaluation.plots import save_confusion_matrices
from util.fileio import atomic_write, write_json


def main(argv: list[str] | None = None) -> int:
    """Parse options, train the folds, write and score the predictions; 0 on success, 1 with a reason."""
    opt = parse_grader_options(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        table, summary = run_grading_protocol(opt)
        report = score_prediction_table(table, "3D grader predictions", ["3D CT crop (SupCon-SENet)"],
                                        summary["pool_class_counts"], summary["fold_train_sizes"])
    except (OSError, ValueError) as err:
        print(f"train_grader3d.py: error: {err}", file=sys.stderr)
        return 1
    report.update({"seed": opt.grading_seed, "skipped": summary["skipped"],
                   "seconds_per_fold": summary["seconds_per_fold"], "device": summary["device"]})
    out = Path(opt.results_dir) / opt.name
    with atomic_write(out / "predictions.csv", newline="", encoding="utf-8") as handle:
        table.to_csv(handle, index=False, float_format="%.6f")
    text = grading_summary(report)
    write_json(out / "grading" / "grading.json", report)
    with atomic_write(out / "grading" / "grading.txt", encoding="utf-8") as handle:
        handle.write(text)
    matrices = [fold["confusion_matrix"] for fold in report["folds"]] + [report["confusion_matrix_total"]]
    titles = [f"fold {fold['fold']} (val)" for fold in report["folds"]] + ["all folds"]
    save_confusion_matrices(matrices, titles, report["classes"], out / "grading" / "confusion_matrices.png")
    print(text, end="")
    print(f"written: {out / 'predictions.csv'}, {out / 'grading' / 'grading.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
