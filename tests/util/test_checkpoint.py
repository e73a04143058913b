"""util/checkpoint.py: one-file checkpoints round-trip every state, are written atomically and fail on one line."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from util.checkpoint import (
    CHECKPOINT_FORMAT,
    Progress,
    generator_state_dict,
    load_checkpoint,
    restore_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


class TinyModel:
    """The pix2pix-shaped interface save/restore use: nets, an optimizer, a scheduler."""

    def __init__(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.net = nn.Linear(3, 2)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=0.01)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.5)

    def train_step(self) -> None:
        self.optimizer.zero_grad()
        self.net(torch.ones(4, 3)).square().sum().backward()
        self.optimizer.step()
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"nets": {"G": self.net.state_dict()}, "optimizers": {"G": self.optimizer.state_dict()},
                "schedulers": [self.scheduler.state_dict()], "scalers": {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["nets"]["G"])
        self.optimizer.load_state_dict(state["optimizers"]["G"])
        self.scheduler.load_state_dict(state["schedulers"][0])


def test_round_trip_restores_weights_optimizer_scheduler_progress_and_rng(tmp_path: Path) -> None:
    trained = TinyModel(seed=1)
    for _ in range(3):
        trained.train_step()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    path = save_checkpoint(tmp_path / "latest.pth", trained, Progress(4, 2, 30), {"lr": 0.01, "name": "exp"})
    expected_draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))

    fresh = TinyModel(seed=2)
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    checkpoint = load_checkpoint(path)
    assert checkpoint["format"] == CHECKPOINT_FORMAT and checkpoint["options"] == {"lr": 0.01, "name": "exp"}
    assert restore_checkpoint(checkpoint, fresh) == Progress(epoch=4, epoch_iter=2, total_iters=30, epoch_done=False)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected_draws
    for name, value in trained.net.state_dict().items():
        assert torch.equal(fresh.net.state_dict()[name], value)
    assert fresh.scheduler.get_last_lr() == pytest.approx([0.01 * 0.5**3])
    trained.train_step(), fresh.train_step()  # Adam moments came back too: the next step is the same
    assert torch.equal(fresh.net.weight, trained.net.weight)


def test_restore_without_rng_keeps_the_seeded_generators(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "a.pth", TinyModel(seed=1), Progress(1, 0, 0), {})
    fresh = TinyModel(seed=2)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    restore_checkpoint(load_checkpoint(path), fresh, restore_rng=False)
    assert torch.equal(torch.rand(3), expected)


def test_a_rank_the_checkpoint_has_no_state_for_keeps_its_rng(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "a.pth", TinyModel(seed=1), Progress(1, 0, 0), {}, rng_states=[rng_state()])
    fresh = TinyModel(seed=2)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    restore_checkpoint(load_checkpoint(path), fresh, rank=1)
    assert torch.equal(torch.rand(3), expected)


def test_rng_state_round_trips_through_set_rng_state() -> None:
    state = rng_state()
    first = (random.random(), np.random.rand(2).tolist(), torch.rand(2).tolist())
    set_rng_state(state)
    assert (random.random(), np.random.rand(2).tolist(), torch.rand(2).tolist()) == first


def test_a_failed_save_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "latest.pth", TinyModel(seed=1), Progress(1, 0, 5), {"keep": 1})
    before = path.read_bytes()

    class Unpicklable(TinyModel):
        def state_dict(self) -> dict[str, Any]:
            return {**super().state_dict(), "extra": lambda: None}  # torch.save cannot pickle a lambda

    with pytest.raises(Exception):  # noqa: B017 - pickle raises AttributeError or PicklingError by version
        save_checkpoint(path, Unpicklable(seed=2), Progress(2, 0, 9), {"keep": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]


@pytest.mark.parametrize("content, problem", [
    (b"not a checkpoint at all", "not a readable checkpoint"),
    (b"PK\x03\x04truncated zip", "not a readable checkpoint"),
])
def test_a_bad_file_is_a_one_line_error_naming_it(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=problem) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value) and "\x1b" not in str(err.value)


def test_an_unsafe_pickle_is_refused_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pth"
    torch.save({"format": CHECKPOINT_FORMAT, "path": Path("x")}, path)  # a global weights_only refuses
    with pytest.raises(ValueError, match="not a readable checkpoint .*pathlib") as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_a_foreign_or_missing_file_names_the_file(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match=f"^{foreign}: not a {CHECKPOINT_FORMAT} file$"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match=f"^{tmp_path / 'absent.pth'}: checkpoint not found$"):
        load_checkpoint(tmp_path / "absent.pth")


def test_generator_state_dict_reads_g_or_says_it_is_missing(tmp_path: Path) -> None:
    model = TinyModel(seed=3)
    path = save_checkpoint(tmp_path / "a.pth", model, Progress(1, 0, 0), {})
    assert torch.equal(generator_state_dict(path)["weight"], model.net.weight.detach())

    class NoGenerator(TinyModel):
        def state_dict(self) -> dict[str, Any]:
            return {**super().state_dict(), "nets": {"D": self.net.state_dict()}}

    path = save_checkpoint(tmp_path / "d.pth", NoGenerator(seed=3), Progress(1, 0, 0), {})
    with pytest.raises(ValueError, match=f"^{path}: checkpoint holds no generator weights$"):
        generator_state_dict(path)
