"""Attention (HGAM; docs/design.md, 'Attention classifier'): a fracture
classifier on sagittal slices of the straightened crops and its Grad-CAM++ maps, which the generator
receives as 1 - CAM.

- :mod:`Attention.networks`: the classifier networks and the layer Grad-CAM++ reads.
- :mod:`Attention.slices`: sagittal training slices, sampling weights, augmentation.
- :mod:`Attention.training`: options, training loop, per-vertebra metrics.
- :mod:`Attention.checkpoint`: the classifier checkpoint.
- :mod:`Attention.cam`: Grad-CAM++ maps on the crop grid and their PNG montages.
- :mod:`Attention.localisation`: where a map points.
"""
