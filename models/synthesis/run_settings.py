"""The settings of one synthesis run, read once from the command line (docs/design.md, 'Iterative synthesis').

``eval_3d_sagittal_twostage.py`` (and ``predict.py``) parse their flags into an ``argparse.Namespace``;
:meth:`SynthesisRunSettings.from_options` reads every flag the synthesis uses, with its default, in one
place, and the dataset driver (``models.synthesis.dataset``) takes the typed object whole (its ``flags`` go
whole to the per-model settings, ``models.synthesis.settings.settings_for``).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.crops import default_split_json
from data.planes import PLANES
from models.synthesis.outputs import PLANE_MODES, synthesis_dir
from models.synthesis.settings import SynthesisFlags


@dataclass(frozen=True)
class SynthesisRunSettings:
    """What a dataset run synthesizes, with which checkpoints, where the results go, and how it runs.

    dataroot: crop folder (``CT/``, ``label/``); cam_dir: attention maps (``None``: all zeros);
    output_root: receives ``CT_fake/``, ``label_fake/`` (``models.synthesis.outputs.synthesis_dir``).
    plane_mode: sagittal | coronal | both; names: checkpoint name per synthesized plane;
    checkpoints_dir, epoch, load_iter: which checkpoint file (``load_iter`` > 0 wins over ``epoch``).
    gpu_ids: ``--gpu_ids`` (``None``: auto); split: comma-separated split names, ``None``/``all``: every crop;
    split_json: ``None``: ``<dataroot>/../vertebra_data.json``; num_test: at most this many vertebrae
    (``None``: all); overwrite: recompute vertebrae whose outputs are up to date.
    batch_size: slices per generator call (0: all, -1: automatic); amp, amp_dtype, cpu_bf16: autocast;
    compile: ``torch.compile`` the generators (``--compile``, ``models.compilation``).
    flags: the flags that shape every step (``models.synthesis.settings.SynthesisFlags``: protocol,
    ``--no_iterative``, masking flags used where a checkpoint lacks them).
    """

    dataroot: Path
    output_root: Path
    names: dict[str, str]
    cam_dir: Path | None = None
    plane_mode: str = "sagittal"
    checkpoints_dir: Path = Path("./checkpoints")
    epoch: str = "latest"
    load_iter: int = 0
    gpu_ids: str | None = "-1"
    split: str | None = None
    split_json: Path | None = None
    num_test: int | None = None
    overwrite: bool = False
    batch_size: int = -1
    amp: bool = False
    amp_dtype: str = "auto"
    cpu_bf16: bool = False
    compile: bool = False
    flags: SynthesisFlags = SynthesisFlags()

    @classmethod
    def from_options(cls, opt: argparse.Namespace) -> SynthesisRunSettings:
        """Read the synthesis flags of ``opt`` (absent ones take their defaults); ``ValueError`` for an unknown
        ``--plane`` or ``--plane both`` without ``--name_coronal``."""
        def given(name: str, default: Any = None) -> Any:
            value = getattr(opt, name, None)
            return default if value is None else value

        plane_mode = given("plane", "sagittal")
        if plane_mode not in PLANE_MODES:
            raise ValueError(f"--plane {plane_mode!r}: expected one of {PLANE_MODES}")
        names = {plane: opt.name for plane in (PLANES if plane_mode == "both" else (plane_mode,))}
        if plane_mode == "both":
            if not given("name_coronal"):
                raise ValueError("--plane both needs --name_coronal (the coronal model's checkpoint name)")
            names["coronal"] = opt.name_coronal
        num_test = given("num_test", math.inf)
        window = given("hu_window")
        return cls(
            dataroot=Path(opt.dataroot), output_root=synthesis_dir(opt), names=names,
            cam_dir=Path(opt.cam_dir) if given("cam_dir") else None, plane_mode=plane_mode,
            checkpoints_dir=Path(given("checkpoints_dir", "./checkpoints")), epoch=str(given("epoch", "latest")),
            load_iter=int(given("load_iter", 0) or 0), gpu_ids=getattr(opt, "gpu_ids", "-1"), split=given("split"),
            split_json=Path(opt.split_json) if given("split_json") else None,
            num_test=None if num_test == math.inf else int(num_test), overwrite=bool(given("overwrite", False)),
            batch_size=int(given("synthesis_batch_size", -1)), amp=bool(given("amp", False)),
            amp_dtype=str(given("amp_dtype", "auto")), cpu_bf16=bool(given("cpu_bf16", False)),
            compile=bool(given("compile", False)),
            flags=SynthesisFlags(
                protocol=given("protocol"), iterative=not bool(given("no_iterative", False)),
                mask_height_mm=None if given("mask_height") is None else float(opt.mask_height),
                hu_window=None if window is None else (float(window[0]), float(window[1])),
                min_component_px=None if given("min_component_px") is None else int(opt.min_component_px)),
        )

    @property
    def planes(self) -> list[str]:
        """The planes synthesized, sagittal first."""
        return list(self.names)

    @property
    def selects_splits(self) -> bool:
        """Whether ``split`` names splits of the split JSON (else every crop is taken)."""
        return bool(self.split) and self.split != "all"

    @property
    def split_path(self) -> Path:
        """The split JSON: ``split_json``, else ``<dataroot>/../vertebra_data.json``."""
        return self.split_json or default_split_json(self.dataroot)
