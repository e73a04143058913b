"""Train the HGAM fracture classifier on sagittal slices of straightened crops.

Example (CPU):
    python Attention/train_classifier.py --dataroot DIR/straightened --split_json DIR/vertebra_data.json \
        --name phantom_cls --arch small --gpu_ids -1
"""

import logging
import sys

from Attention.training import format_metrics, parse_classifier_options, train_classifier


def main(argv: list[str] | None = None) -> int:
    """Parse options, train, print the validation metrics; 0 on success, 1 with a one-line reason."""
    opt = parse_classifier_options(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        metrics = train_classifier(opt)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_metrics(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
