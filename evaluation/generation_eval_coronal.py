"""PSNR/SSIM/Dice/IoU/RVD of synthesized vertebrae on healthy val vertebrae, coronal slices (DESIGN 5).

Same flags and outputs as generation_eval_sagittal.py, on coronal slices [:, y, :].
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.generation_eval_sagittal import main as _main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return _main(argv, plane="coronal")


if __name__ == "__main__":
    sys.exit(main())
