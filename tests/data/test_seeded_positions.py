"""The one probe choice: the head of a seeded permutation, from a generator of its own."""

import torch

from src.data.in_memory import seeded_positions


def test_seeded_positions_are_the_head_of_a_seeded_permutation_and_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    head = torch.randperm(50, generator=torch.Generator().manual_seed(7))[:8]
    assert torch.equal(seeded_positions(50, 8, 7, in_order=False), head)
    assert torch.equal(seeded_positions(50, 8, 7), head.sort().values)
    assert torch.equal(seeded_positions(5, 8, 7), torch.arange(5))  # more asked than there are: all of them
    assert torch.equal(torch.get_rng_state(), state)
