"""Grad-CAM++ attention maps of the fracture classifier on the central sagittal slices of each crop.

Example (CPU):
    python Attention/grad_CAM_3d_sagittal.py --dataroot DIR/straightened --name phantom_cls --gpu_ids -1
writes DIR/heatmap/<case>_<v>.nii.gz (float32 in [0, 1], crop grid) and DIR/heatmap/<case>_<v>.png,
and prints where the maps point (DIR/heatmap/localisation.{json,csv}, ``Attention.localisation``).
"""

import logging
import sys

from Attention.cam import generate_maps, parse_cam_options
from Attention.localisation import TARGET_WINDOW_TITLE, summary_lines


def main(argv: list[str] | None = None) -> int:
    """Parse options and write the maps; non-zero when the checkpoint or any crop fails."""
    opt = parse_cam_options(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        summary = generate_maps(opt)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{len(summary['written'])} maps written, {len(summary['skipped'])} existing kept, "
          f"{len(summary['failed'])} failed -> {summary['out']}")
    print("\n".join(summary_lines(summary["localisation"])))
    if summary["localisation_target_window"] is not None:
        print("\n".join(summary_lines(summary["localisation_target_window"],
                                       f"attention localisation, {TARGET_WINDOW_TITLE}")))
    for key, reason in summary["failed"].items():
        print(f"failed: {key}: {reason}", file=sys.stderr)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
