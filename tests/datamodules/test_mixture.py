"""Mixture sampling: reproducible draws, rates, sharding, named eval splits, and mid-epoch resume."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from evf.datamodules import DatasetSpec, MixtureDataModule, MixtureSampler
from evf.datamodules import mixture as mixture_module

from .fixtures import Ref, ReferImage, write_ade20k, write_refer


def test_draws_depend_only_on_seed_and_epoch() -> None:
    a, b = MixtureSampler([5, 7], [1, 3], 40, seed=1), MixtureSampler([5, 7], [1, 3], 40, seed=1)
    assert list(a) == list(b) and len(list(a)) == len(a) == 40
    a.set_epoch(1)
    assert list(a) != list(b) and all(epoch == 1 for epoch, _, _ in a)
    assert list(MixtureSampler([5, 7], [1, 3], 40, seed=2)) != list(b)


def test_rates_and_coverage() -> None:
    draws = MixtureSampler([4, 50, 9], [2, 1, 1], 4000, seed=0).draws(0)
    counts = Counter(d for d, _ in draws)
    assert abs(counts[0] / 4000 - 0.5) < 0.03 and abs(counts[1] / 4000 - 0.25) < 0.03
    assert sorted(i for d, i in draws if d == 0)[:4] == [0, 0, 0, 0]
    assert sorted([i for d, i in draws if d == 0][:4]) == [0, 1, 2, 3], "every item comes before any repeat"
    per_item = Counter(i for d, i in draws if d == 2).values()
    assert max(per_item) - min(per_item) <= 1
    with pytest.raises(ValueError, match="one rate per dataset"):
        MixtureSampler([4], [1, 1], 10)
    with pytest.raises(ValueError, match="not all zero"):
        MixtureSampler([4, 4], [0, 0], 10)


def test_shards_and_resume_replay_the_same_remaining_draws(monkeypatch) -> None:
    full = list(MixtureSampler([6, 6], [1, 1], 23, seed=4))
    shards = {}
    for rank in range(2):
        monkeypatch.setattr(mixture_module, "rank_world", lambda rank=rank: (rank, 2))
        sampler = MixtureSampler([6, 6], [1, 1], 23, seed=4)
        shards[rank] = list(sampler)
        assert len(sampler) == 11 == len(shards[rank])
        resumed = MixtureSampler([6, 6], [1, 1], 23, seed=4)
        resumed.resume(0, consumed=8)  # 2 batches of 2 on each of 2 ranks
        assert list(resumed) == shards[rank][4:]
        assert list(resumed) == shards[rank], "the skip applies to one pass only"
    assert shards[0] + shards[1] != full and sorted(shards[0] + shards[1]) == sorted(full[:22])


@pytest.fixture(scope="module")
def mixture_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mixture")
    refer = [
        ReferImage(20, 24, [Ref([(1, 1, 9, 9 + n)], [f"thing {n}", f"object {n}"], split)])
        for n, split in enumerate(["train", "train", "train", "val", "testA"])
    ]
    write_refer(root / "refer_seg", "refcoco", "unc", refer)
    labels = [np.pad(np.full((4, 4), k, np.uint8), 6) for k in (1, 2, 3, 4)]
    write_ade20k(root, {"train": labels[:3], "val": labels[3:]})
    return root


def _datamodule(root: Path, **kwargs) -> MixtureDataModule:
    train = [
        DatasetSpec("refcoco", str(root / "refer_seg"), "train", rate=1.0),
        DatasetSpec("ade20k", str(root / "ADEChallengeData2016"), "train", rate=1.0),
    ]
    val = [
        DatasetSpec("refcoco", str(root / "refer_seg"), "val"),
        DatasetSpec("refcoco", str(root / "refer_seg"), "testA"),
        DatasetSpec("ade20k", str(root / "ADEChallengeData2016"), "val", name="ade/val"),
    ]
    options = dict(
        samples_per_epoch=8,
        batch_size=2,
        eval_batch_size=2,
        num_workers=0,
        encoder="beit3_tiny",
        backend="sam_tiny",
    )
    return MixtureDataModule(train=train, val=val, **{**options, **kwargs})


def test_datamodule_names_splits_and_mixes(mixture_root: Path) -> None:
    dm = _datamodule(mixture_root)
    assert dm.split_names("validate") == ["refcoco/val", "refcoco/testA", "ade/val"]
    assert dm.split_names("test") == []
    assert [len(d) for d in dm.eval_datasets("validate").values()] == [1, 1, 1]
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and all(len(b.image_ids) == 2 for b in batches)
    texts = [t for b in batches for t in b.texts]
    assert any(t.startswith("[semantic] ") for t in texts) and any(
        t.startswith(("thing", "object")) for t in texts
    )
    val = dm.val_dataloader()[2]
    assert next(iter(val)).texts == ["[semantic] floor"]
    with pytest.raises(ValueError, match="split names repeat"):
        MixtureDataModule(val=[DatasetSpec("ade20k", "x", "val"), DatasetSpec("ade20k", "y", "val")])
    with pytest.raises(ValueError, match=r"refcoco\+/train: `root` is not set"):
        MixtureDataModule(train=[DatasetSpec("refcoco+")]).train_dataset()


class _Recorder(L.LightningModule):
    """Records what each training step sees; learns nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen.append((self.current_epoch, tuple(batch.image_ids), tuple(batch.texts)))
        return self.weight.sum() * 0.0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(dm: MixtureDataModule, out: Path, max_steps: int, ckpt: Path | None = None) -> list[tuple]:
    model = _Recorder()
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=out,
        callbacks=[ModelCheckpoint(dirpath=out, every_n_train_steps=2, save_top_k=-1)],
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    return model.seen


@pytest.mark.parametrize("workers, step", [(0, 4), (0, 6), (1, 4), (1, 6)])
def test_resumed_run_replays_the_same_remaining_draws(
    mixture_root: Path, tmp_path: Path, workers: int, step: int
) -> None:
    full = _fit(_datamodule(mixture_root, num_workers=workers), tmp_path / "full", max_steps=10)
    assert [epoch for epoch, _, _ in full] == [0] * 4 + [1] * 4 + [2] * 2
    (ckpt,) = (tmp_path / "full").glob(f"*step={step}.ckpt")
    resumed = _fit(
        _datamodule(mixture_root, num_workers=workers), tmp_path / "resumed", max_steps=10, ckpt=ckpt
    )
    assert resumed == full[step:]


def test_the_dataset_kind_literal_and_the_kinds_table_name_the_same_kinds():
    from typing import get_args

    from evf.datamodules.catalog import KINDS, DatasetKind

    assert list(get_args(DatasetKind)) == list(KINDS)  # a kind in one but not the other fails here
