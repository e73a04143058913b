"""Optional ``torch.compile`` of the networks (``--compile``; docs/design.md, 'Devices and distributed runs').

A network is compiled in place (``nn.Module.compile``): it stays the same module, so its ``state_dict`` keys,
checkpoints, ``DistributedDataParallel`` wrapping and ``models.base_model.unwrap`` are those of the eager
network (no ``_orig_mod.`` prefix), and a checkpoint trained with ``--compile`` loads without it. Compilation
happens on the first call of each input signature (seconds to minutes, see benchmarks/README.md); TorchInductor
needs a C++ compiler on the CPU and Triton on a GPU, and :func:`compile_network` says in one line when one is
missing. Contextual attention runs eagerly inside a compiled generator (``torch.compiler.disable`` in
``models.contextual_attention``). Batch sizes are left to PyTorch's automatic dynamic shapes: the first size
compiles a static graph, a second size one graph with a symbolic batch; ``models.synthesis.runner.GeneratorRunner``
pads its chunks so that a synthesis run needs one graph per chunk size.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

BACKEND = "inductor"
# backends that only trace (tests): they need no compiler
TRACING_BACKENDS = frozenset({"eager", "aot_eager"})


class CompileUnavailableError(ValueError):
    """``--compile`` was asked for where ``torch.compile`` cannot run (no C++ compiler, no Triton, ...)."""


def add_compile_option(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--compile`` (unless an earlier option group defined it)."""
    if "--compile" not in parser._option_string_actions:
        parser.add_argument("--compile", action="store_true",
                            help="run the networks through torch.compile (TorchInductor; needs a C++ compiler on the "
                                 "CPU, Triton on a GPU; the first calls compile for minutes; default: off, eager)")
    return parser


def cpu_compiler() -> str | None:
    """The C++ compiler TorchInductor would use on the CPU, ``None`` when it finds none."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:  # InvalidCxxCompiler, or an inductor that cannot be imported on this platform
        return None


def gpu_compiler_available() -> bool:
    """Whether Triton (TorchInductor's GPU code generator) is usable."""
    try:
        from torch.utils._triton import has_triton

        return bool(has_triton())
    except Exception:
        return False


def compile_unavailable_reason(device: torch.device | str, backend: str = BACKEND) -> str | None:
    """Why ``torch.compile`` with ``backend`` cannot run on ``device``, or ``None`` when it can."""
    device = torch.device(device)
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile is not supported by this Python/PyTorch build (torch {torch.__version__})"
    if backend in TRACING_BACKENDS:
        return None
    if device.type == "cuda" and not gpu_compiler_available():
        return "Triton is not installed or does not support this GPU (pip install triton)"
    if device.type == "cpu" and cpu_compiler() is None:
        return "no C++ compiler found for TorchInductor (install g++ or clang++, or set CXX)"
    return None


def require_compile(device: torch.device | str, backend: str = BACKEND) -> None:
    """Raise :class:`CompileUnavailableError` (one line) when ``torch.compile`` cannot run on ``device``."""
    reason = compile_unavailable_reason(device, backend)
    if reason is not None:
        raise CompileUnavailableError(f"--compile: {reason}; run without --compile")


def compile_network(net: nn.Module, device: torch.device | str, backend: str = BACKEND,
                    options: dict[str, Any] | None = None) -> nn.Module:
    """Compile ``net`` in place with ``torch.compile`` (``backend``, inductor ``options``) and return it; its
    parameters, buffers and ``state_dict`` keys are unchanged. Raises :class:`CompileUnavailableError` first
    when the compiler is missing."""
    require_compile(device, backend)
    net.compile(backend=backend, options=options)
    return net


def compile_networks(networks: dict[str, nn.Module], device: torch.device | str, backend: str = BACKEND) -> None:
    """Compile each network of ``networks`` (name -> module) in place (:func:`compile_network`)."""
    require_compile(device, backend)
    for net in networks.values():
        compile_network(net, device, backend)


def is_compiled(net: Any) -> bool:
    """Whether ``net`` (or the module inside a DDP wrapper) was compiled by :func:`compile_network`."""
    inner = getattr(net, "module", net)
    return getattr(inner, "_compiled_call_impl", None) is not None
