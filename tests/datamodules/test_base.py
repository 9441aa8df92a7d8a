import pytest
from torch.utils.data import Dataset

from evf.datamodules.base import EpochSampler, ResumableDataLoader, ResumableSampler
from evf.datamodules.mixture import MixtureSampler


class _Keys(Dataset):
    def __len__(self) -> int:
        return 20

    def __getitem__(self, key):
        return key


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    a, b = EpochSampler(20, seed=3), EpochSampler(20, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    assert sorted(i for _, i in a) == list(range(20))


def test_evaluation_shards_are_disjoint_and_unpadded(monkeypatch):
    seen = []
    for rank in range(3):
        monkeypatch.setattr("evf.datamodules.base.rank_world", lambda rank=rank: (rank, 3))
        sampler = EpochSampler(10, shuffle=False, even=False)
        keys = list(sampler)
        assert len(keys) == len(sampler)
        seen += [i for _, i in keys]
    assert sorted(seen) == list(range(10))


def test_loader_resumes_mid_epoch_with_the_same_draws():
    batches_done = {"n": 0}
    fresh = ResumableDataLoader(_Keys(), EpochSampler(20, seed=1), lambda: batches_done["n"], batch_size=4)
    fresh.sampler.set_epoch(1)
    full = [k for batch in fresh for k in zip(*batch, strict=True)]

    batches_done["n"] = 2  # a checkpoint after 2 batches of epoch 1
    state = fresh.state_dict()
    assert state["epoch"] == 1 and state["consumed"] == 8

    resumed = ResumableDataLoader(_Keys(), EpochSampler(20, seed=1), lambda: 0, batch_size=4)
    resumed.load_state_dict(state)
    rest = [k for batch in resumed for k in zip(*batch, strict=True)]
    assert rest == full[8:]

    batches_done["n"] = len(fresh)  # a checkpoint at the end of the epoch points at the next one
    assert fresh.state_dict()["epoch"] == 2 and fresh.state_dict()["consumed"] == 0


@pytest.mark.parametrize(
    "make", [lambda: EpochSampler(20, seed=1), lambda: MixtureSampler([5, 7], [1.0, 2.0], 20, seed=1)]
)
def test_a_resume_skips_the_consumed_draws_of_one_pass_only(make):
    sampler = make()
    assert isinstance(sampler, ResumableSampler)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.resume(2, 6)
    assert sampler.epoch == 2 and list(sampler) == full[6:]
    assert list(sampler) == full  # the next pass over epoch 2 starts at its first draw again
    sampler.resume(2, 6)
    sampler.set_epoch(3)
    assert len(list(sampler)) == 20  # the skip belongs to epoch 2
