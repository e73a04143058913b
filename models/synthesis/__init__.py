"""Iterative two-stage synthesis of pseudo-healthy vertebrae (inference; docs/design.md, 'Iterative synthesis').

- ``run_settings``: the run's flags, read once from the command line (``SynthesisRunSettings``);
- ``settings``: masking/composition settings of one trained model (band rows, window, thresholds, protocol);
- ``shifts``: moving slices vertically (neighbour re-centring) and back;
- ``truncation``: the reference protocol's uint8 grey truncation between steps;
- ``runner``: running a generator on stacks of slices (chunks, channels-last, autocast);
- ``plane``: the per-plane algorithm (upper neighbour, lower neighbour, target);
- ``fusion``: the 2.5D fusion of the sagittal and coronal syntheses;
- ``checkpoints``: loading a training checkpoint's generator;
- ``outputs``: the output folders of a run, key selection, the run summary;
- ``dataset``: the whole-dataset driver (resuming, sharding over ``torchrun`` ranks).
"""
