"""A synthesis run's output folders, the vertebrae it takes, and its summary
(docs/design.md, 'Synthesis outputs and provenance'; the per-file layout is ``data.synthesis_layout``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.crops import default_split_json, list_crop_keys, read_split
from data.planes import PLANES
from data.synthesis_layout import OutputLayout
from util.distributed import gather_objects
from util.settings import FromOptions

PLANE_MODES = (*PLANES, "both")


@dataclass(frozen=True)
class SynthesisFolder(FromOptions):
    """``--output_dir``, ``--results_dir`` and ``--name`` of a synthesis run (``None``: not given)."""

    output_dir: str | None = None
    results_dir: str | None = None
    name: str | None = None

    @property
    def path(self) -> Path:
        """``output_dir`` when set, else ``<results_dir>/<name>``."""
        if self.output_dir:
            return Path(self.output_dir)
        if self.results_dir is None or self.name is None:
            raise ValueError("--results_dir and --name are required without --output_dir")
        return Path(self.results_dir) / self.name


def synthesis_dir(opt: argparse.Namespace) -> Path:
    """The folder receiving ``CT_fake/`` and ``label_fake/``: ``opt.output_dir`` when set, else
    ``<results_dir>/<name>`` (:class:`SynthesisFolder`)."""
    return SynthesisFolder.from_options(opt).path


def output_layouts(root: str | Path, plane_mode: str) -> dict[str, OutputLayout]:
    """Output folders per product under ``root`` (:func:`synthesis_dir`): ``sagittal``/``coronal``
    (the plane run alone goes to ``root``); with ``both``: sagittal in ``root``, coronal in
    ``root/coronal/``, the 2.5D fusion in ``root/fused/``."""
    root = Path(root)
    if plane_mode == "both":
        return {"sagittal": OutputLayout(root), "coronal": OutputLayout(root / "coronal"),
                "fused": OutputLayout(root / "fused")}
    if plane_mode not in PLANES:
        raise ValueError(f"--plane {plane_mode!r}: expected one of {PLANE_MODES}")
    return {plane_mode: OutputLayout(root)}


def shard(keys: Sequence[str], rank: int, world_size: int) -> list[str]:
    """The keys of ``rank`` out of ``world_size`` (round robin over the sorted keys)."""
    return list(keys)[rank::world_size]


def select_keys(dataroot: str | Path, split_names: str | None, split_json: str | Path | None) -> list[str]:
    """Vertebra keys to synthesize: every label crop, or the keys of the named splits (comma-separated,
    e.g. ``val,test``) in the split JSON (default ``<dataroot>/../vertebra_data.json``). Keys listed
    in the split without a crop are kept (``synthesize_dataset`` refuses them before any work)."""
    if not split_names or split_names == "all":
        return list_crop_keys(dataroot)
    path = Path(split_json) if split_json else default_split_json(dataroot)
    split = read_split(path)
    names = [name.strip() for name in split_names.split(",") if name.strip()]
    unknown = [name for name in names if name not in split]
    if unknown:
        raise ValueError(f"--split {split_names!r}: unknown split(s) {unknown}; expected train, val, test or all")
    return sorted({key for name in names for key in split[name]})


@dataclass
class SynthesisSummary:
    """Outcome of a dataset run: keys synthesized, skipped (outputs existed) and failed (key -> reason)."""

    succeeded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    redone: list[str] = field(default_factory=list)  # outputs existed but came from another checkpoint/options/input
    missing_attention: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def merge(self, other: SynthesisSummary) -> None:
        self.succeeded += other.succeeded
        self.skipped += other.skipped
        self.redone += other.redone
        self.failed.update(other.failed)
        self.missing_attention += other.missing_attention
        self.seconds = max(self.seconds, other.seconds)

    def as_dict(self) -> dict[str, Any]:
        return {"succeeded": sorted(self.succeeded), "skipped": sorted(self.skipped), "redone": sorted(self.redone),
                "failed": dict(sorted(self.failed.items())), "missing_attention": sorted(self.missing_attention),
                "seconds": round(self.seconds, 2)}

    def report(self) -> str:
        """Multi-line human summary."""
        lines = [f"synthesis: {len(self.succeeded)} succeeded, {len(self.skipped)} skipped (already done), "
                 f"{len(self.failed)} failed in {self.seconds:.1f} s"]
        if self.redone:
            lines.append(f"  re-synthesized {len(self.redone)} vertebra(e) whose outputs came from another checkpoint, "
                         f"options or input, e.g. {sorted(self.redone)[0]}")
        if self.missing_attention:
            lines.append(f"  no attention map (zeros used) for {len(self.missing_attention)} vertebra(e), "
                         f"e.g. {sorted(self.missing_attention)[0]}")
        lines += [f"  FAILED {key}: {reason}" for key, reason in sorted(self.failed.items())]
        return "\n".join(lines)


def gather_summaries(summary: SynthesisSummary) -> SynthesisSummary:
    """Merge the summaries of all ranks over the Gloo control group (shards may finish far apart in time;
    a no-op outside ``torchrun``)."""
    gathered = gather_objects(summary)
    if len(gathered) == 1:
        return summary
    merged = SynthesisSummary()
    for part in gathered:
        if part is not None:
            merged.merge(part)
    return merged
