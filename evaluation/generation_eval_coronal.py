"""PSNR/SSIM/Dice/IoU/RVD of synthesized vertebrae on healthy val vertebrae, coronal slices
(docs/design.md, 'Generation metrics').

Same flags and outputs as generation_eval_sagittal.py, on coronal slices [:, y, :].
"""

import sys

from evaluation.generation_eval_sagittal import main as _main


def main(argv: list[str] | None = None) -> int:
    return _main(argv, plane="coronal")


if __name__ == "__main__":
    sys.exit(main())
