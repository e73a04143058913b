"""``--compile`` (models.compilation): compiled and eager networks agree, gradients flow, checkpoints keep their
keys, synthesis chunks share one graph, and a missing compiler is a one-line error.

The TorchInductor tests compile for minutes on a cold cache on a 2-core CPU and are marked slow; the others
trace with a counting backend (no code generation) or do not call the network at all.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils import parametrize

import models
from models.compilation import (
    CompileUnavailableError,
    compile_network,
    compile_unavailable_reason,
    is_compiled,
    require_compile,
)
from models.networks import HealthiVertGenerator, NLayerDiscriminator
from models.synthesis.runner import GeneratorRunner
from models.synthetic import synthetic_batch
from tests.models.test_models import model_options

SIZE = 32
TOLERANCE = 1e-5  # compiled vs eager outputs: CT in [-1, 1], probabilities, heights in rows (float32 rounding)


def tiny_generator(seed: int = 0) -> HealthiVertGenerator:
    torch.manual_seed(seed)
    return HealthiVertGenerator(ngf=4, mask_height_px=8.0).eval().to(memory_format=torch.channels_last)


def generator_inputs(batch: int = 2) -> tuple[torch.Tensor, ...]:
    b = synthetic_batch(batch, SIZE)
    return b["masked_ct"], b["offset_plane"], b["band_mask"], b["cam"]


class CountingBackend:
    """A ``torch.compile`` backend that runs the traced graph as is and counts the graphs it was given."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1
        return graph.forward


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------- wrapper logic
def test_compiled_network_keeps_its_state_dict_keys_and_loads_eager_weights():
    eager, compiled = tiny_generator(0), tiny_generator(1)
    compile_network(compiled, "cpu", backend="eager")
    assert is_compiled(compiled) and not is_compiled(eager)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert not any("_orig_mod" in key for key in compiled.state_dict())
    compiled.load_state_dict(eager.state_dict())  # strict: same keys both ways
    eager.load_state_dict(compiled.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(eager.state_dict().values(), compiled.state_dict().values()))


def test_compile_option_compiles_every_network_and_checkpoints_match_eager():
    eager = models.create_model(model_options("--ngf", "4", "--ndf", "4"))
    eager.setup(eager.opt, load=False)
    opt = model_options("--ngf", "4", "--ndf", "4", "--compile")
    assert opt.compile and not eager.opt.compile  # off by default; recorded in the options
    compiled = models.create_model(opt)
    compiled.setup(opt, load=False)
    assert all(is_compiled(net) for net in compiled.networks().values())
    assert not any(is_compiled(net) for net in eager.networks().values())
    saved, fresh = compiled.state_dict()["nets"], eager.state_dict()["nets"]
    assert {name: list(state) for name, state in saved.items()} == {name: list(state) for name, state in fresh.items()}
    eager.load_state_dict(compiled.state_dict())  # a checkpoint trained with --compile loads without it


def test_missing_cpu_compiler_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr("models.compilation.cpu_compiler", lambda: None)
    net = NLayerDiscriminator(1, 4, 2)
    with pytest.raises(CompileUnavailableError) as error:
        compile_network(net, "cpu")
    message = str(error.value)
    assert "\n" not in message and "--compile" in message and "C++ compiler" in message
    assert not is_compiled(net)
    assert compile_unavailable_reason("cpu", backend="eager") is None  # tracing backends need no compiler
    with pytest.raises(ValueError, match="C.. compiler"):  # train.py / synthesis report ValueErrors in one line
        models.create_model(model_options("--ngf", "4", "--ndf", "4", "--compile"))


def test_missing_triton_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr("models.compilation.gpu_compiler_available", lambda: False)
    with pytest.raises(CompileUnavailableError, match="Triton"):
        require_compile("cuda")


def test_runner_pads_chunks_so_one_graph_serves_every_chunk_size():
    eager = tiny_generator()
    compiled = tiny_generator()
    backend = CountingBackend()
    compile_network(compiled, "cpu", backend=backend)
    rng = np.random.default_rng(0)
    batch = synthetic_batch(7, SIZE)
    ct, band, cam = (batch[k][:, 0].numpy() for k in ("masked_ct", "band_mask", "cam"))
    offsets = rng.uniform(-1, 1, 7).astype(np.float32)
    runner = GeneratorRunner(compiled, batch_size=4)
    assert runner.padded_size(3) == 4 and GeneratorRunner(eager, batch_size=4).padded_size(3) == 3
    graphs = []
    for count in (4, 7, 3, 1, 6):  # chunks of 4, 3, 1 and 2 slices
        got = runner(ct[:count], offsets[:count], band[:count], cam[:count], 8)
        want = GeneratorRunner(eager, batch_size=4)(ct[:count], offsets[:count], band[:count], cam[:count], 8)
        for g, w in zip(got, want):
            assert g.shape == w.shape and np.allclose(g, w, atol=1e-6)
        graphs.append(backend.graphs)
    # the graphs of the first chunk (split around the eager contextual attention) serve every later one
    assert graphs[0] >= 1 and graphs == [graphs[0]] * len(graphs)
    assert GeneratorRunner(compiled, batch_size=0).padded_size(1) == 2


def test_compiled_network_trains_under_ddp_with_unchanged_keys(tmp_path):
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        eager = NLayerDiscriminator(1, 4, 2)
        net = NLayerDiscriminator(1, 4, 2)
        net.load_state_dict(eager.state_dict())
        backend = CountingBackend()
        wrapped = nn.parallel.DistributedDataParallel(compile_network(net, "cpu", backend=backend))
        x = torch.randn(2, 1, SIZE, SIZE)
        wrapped(x).square().mean().backward()
        eager(x).square().mean().backward()
        assert backend.graphs >= 1 and is_compiled(wrapped)
        assert list(wrapped.module.state_dict()) == list(eager.state_dict())
        for a, b in zip(net.parameters(), eager.parameters()):
            assert a.grad is not None and torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- TorchInductor
@pytest.mark.slow
def test_inductor_generator_matches_eager_within_tolerance():
    eager, compiled = tiny_generator(), tiny_generator()
    compile_network(compiled, "cpu")
    inputs = generator_inputs()
    with torch.inference_mode(), parametrize.cached():
        want, got = eager(*inputs, 8.0), compiled(*inputs, 8.0)
    for name in ("coarse_ct", "coarse_neighbour_seg", "coarse_height", "fine_ct", "fine_target_seg", "fine_height"):
        assert torch.allclose(getattr(got, name), getattr(want, name), atol=TOLERANCE, rtol=0), name
    assert torch.equal(got.attention_flow, want.attention_flow)


@pytest.mark.slow
def test_inductor_training_step_gradients_match_eager():
    """One optimize_parameters step (generator and the three discriminators) with --compile and without, from
    the same weights and batch: every network's gradients agree and are non-zero."""
    batch = synthetic_batch(2, SIZE)
    steps = {}
    for flag in ((), ("--compile",)):
        torch.manual_seed(0)
        model = models.create_model(model_options("--ngf", "4", "--ndf", "4", *flag))
        model.setup(model.opt, load=False)
        model.set_input(batch)
        model.optimize_parameters()
        steps[bool(flag)] = model
    for name, net in steps[True].networks().items():
        eager_net = steps[False].networks()[name]
        assert is_compiled(net)
        for (key, a), b in zip(net.named_parameters(), eager_net.parameters()):
            assert a.grad is not None and a.grad.abs().sum() > 0, f"{name}.{key}: no gradient"
            assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-5), f"{name}.{key}"
