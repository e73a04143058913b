"""The choices of how attention maps are scaled and windowed (``grad_CAM_3d_sagittal.py --normalise`` and
``--windows``; docs/design.md, 'Attention classifier'), importable without the Grad-CAM++ stack so that
scripts that only pass them on (``predict.py``) start fast."""

CAM_NORMALISATIONS = ("slice", "volume")
CAM_WINDOWS = ("auto", "target", "vertebrae")

__all__ = ["CAM_NORMALISATIONS", "CAM_WINDOWS"]
