"""Each rank saves and restores its own RNG states, the CUDA one for its own device only, so a run
resumes on any number of GPUs: simulated here (a fake CUDA generator per device index) with the
checkpoint written by 2 ranks and resumed on 1, 2 and 4."""

import io
import logging
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import src.run.distributed
from src.training.run_safety import ResumeState, own_rng_state


class FakeCuda:
    """torch.cuda's per-device generator state, for devices that are not here."""

    def __init__(self) -> None:
        self.states, self.set_calls = {}, []

    def get_rng_state(self, device) -> torch.Tensor:
        return self.states.setdefault(device.index, torch.tensor([device.index, 0], dtype=torch.uint8))

    def set_rng_state(self, state, device) -> None:
        self.set_calls.append((device.index, state.tolist()))


@pytest.fixture
def cuda(monkeypatch):
    fake = FakeCuda()
    monkeypatch.setattr(torch.cuda, "get_rng_state", fake.get_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", fake.set_rng_state)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("ties the state to the GPU count"))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: pytest.fail("ties the state to the GPU count"))
    return fake


def trainer(rank: int, world: int) -> SimpleNamespace:
    strategy = SimpleNamespace(root_device=torch.device("cuda", rank))
    loop = SimpleNamespace(epoch_loop=SimpleNamespace(restarting=False))
    return SimpleNamespace(global_rank=rank, world_size=world, strategy=strategy, fit_loop=loop, train_dataloader=None)


def saved_by_two_ranks(cuda, monkeypatch) -> tuple[dict, list[dict]]:
    """A checkpoint as rank 0 of 2 writes it; rank 1 drew other numbers (its own stream)."""
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    rank0 = own_rng_state(torch.device("cuda", 0))
    torch.rand(5), np.random.rand(3), random.random()
    cuda.states[1] = torch.tensor([1, 42], dtype=torch.uint8)
    rank1 = own_rng_state(torch.device("cuda", 1))
    module = torch.nn.Linear(1, 1)
    torch.set_rng_state(rank0["torch"]), np.random.set_state(np.random.RandomState(0).get_state()), random.seed(0)
    monkeypatch.setattr(src.run.distributed, "gather_objects", lambda t, obj: [obj, rank1])
    checkpoint = {}
    ResumeState().on_save_checkpoint(trainer(0, 2), module, checkpoint)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True), [rank0, rank1]  # loadable as the resume loads it


def resume(checkpoint: dict, rank: int, world: int) -> None:
    state = ResumeState()
    state.on_load_checkpoint(trainer(rank, world), None, checkpoint)
    torch.manual_seed(123)  # what the new run seeded: the resume overrides it
    state.on_train_start(trainer(rank, world), None)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_every_rank_resumes_its_own_state_on_any_gpu_count(world, cuda, monkeypatch, caplog):
    checkpoint, (rank0, rank1) = saved_by_two_ranks(cuda, monkeypatch)
    assert len(checkpoint["rng_states"]["ranks"]) == 2
    for rank in range(world):
        cuda.set_calls.clear()
        with caplog.at_level(logging.WARNING):
            resume(checkpoint, rank, world)
        own = (rank0, rank1)[rank % 2]
        assert torch.equal(torch.get_rng_state(), own["torch"])
        assert np.random.get_state()[1].tolist() == own["numpy"][1].tolist() and random.getstate()[1] == tuple(
            own["python"][1]
        )
        assert cuda.set_calls == [(rank, own["cuda"].tolist())]  # its own device, its own saved stream
    said = [r for r in caplog.records if "more ranks than the checkpoint" in r.getMessage()]
    assert len(said) == (1 if world > 2 else 0)


def test_off_cuda_no_cuda_state_is_saved_or_set(cuda):
    state = own_rng_state(torch.device("cpu"))
    assert state["cuda"] is None
