"""Attention (HGAM; docs/design.md, 'Attention classifier'): a fracture classifier on sagittal slices of the
straightened crops and its Grad-CAM++ maps, which the generator receives as 1 - CAM.

- :mod:`Attention.classifier`: networks, slice data, training, checkpoint I/O.
- :mod:`Attention.cam`: Grad-CAM++ maps on the crop grid and their PNG montages.
"""

from Attention.cam import cam_volume, generate_maps
from Attention.classifier import build_classifier, load_classifier, train_classifier

__all__ = ["build_classifier", "cam_volume", "generate_maps", "load_classifier", "train_classifier"]
