"""The quickstart runs the paper's recipe: the shipped pretrained tiny SAM, frozen behind the embedding
cache, and checkpoints on the pooled ``val/ciou`` whatever the data."""

import json
from pathlib import Path

import pytest
import torch
import yaml

import evf
from evf.assets import BEIT3_TINY_SHAPES, SAM_TINY_SHAPES
from evf.cli import main
from evf.datamodules.shapes import ShapesDataset
from evf.tools.pretrain_sam import evaluate, pretrain_sam

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
CPU = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.num_sanity_val_steps=0"]


def test_the_shipped_sam_loads_strictly_and_segments_shapes_from_a_point_or_a_box():
    scenes = ShapesDataset("val", 4, seed=0)
    pretrained = evaluate(evf.create_backend("sam_tiny", checkpoint=SAM_TINY_SHAPES), scenes)
    torch.manual_seed(0)
    random_init = evaluate(evf.create_backend("sam_tiny"), scenes)
    assert pretrained["point_miou"] > 0.85 and pretrained["box_miou"] > 0.85
    assert random_init["point_miou"] < 0.3 and random_init["box_miou"] < 0.3
    assert SAM_TINY_SHAPES.stat().st_size <= 10 * 2**20


def test_pretraining_is_seeded(tmp_path):
    for name in ("a", "b"):
        pretrain_sam(tmp_path / f"{name}.pt", steps=3, batch_size=2, warmup_steps=1, num_train=6, num_val=1,
                     progress=False)  # fmt: skip
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["mask_decoder.iou_token.weight"], evf.create_backend("sam_tiny").state_dict()[
        "sam.mask_decoder.iou_token.weight"])  # fmt: skip
    evf.create_backend("sam_tiny", checkpoint=tmp_path / "a.pt")  # the segment-anything layout, strictly


def _ckpts(run: Path) -> list[str]:
    return sorted(p.name for p in run.rglob("*.ckpt"))


@pytest.mark.slow
def test_the_quickstart_config_fits_from_the_cache_with_the_sam_frozen(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the config names the asset relative to the repository root
    small = [f"--data.init_args.embedding_cache={tmp_path / 'cache'}", "--data.init_args.num_train=6",
             "--data.init_args.num_val=3", "--data.init_args.num_workers=0"]  # fmt: skip
    main(["cache-embeddings", "--config", str(QUICKSTART), *small, "--progress=false"])
    run = tmp_path / "run"
    main(["fit", "--config", str(QUICKSTART), *small, *CPU, "--trainer.max_steps=3",
          "--data.init_args.batch_size=2", f"--trainer.default_root_dir={run}",
          f"--trainer.logger.init_args.save_dir={run}"])  # fmt: skip
    assert any(name.startswith("best-epoch0-ciou") for name in _ckpts(run)) and "last.ckpt" in _ckpts(run)
    state = torch.load(next(run.rglob("last.ckpt")), weights_only=True)
    assert not any(
        ".image_encoder." in k for k in state["state_dict"]
    )  # never built: features came from the cache
    assert state["evf_image_encoder"]["included"] is False
    assert state["hyper_parameters"]["encoder_checkpoint"] == "evf/assets/beit3_tiny_shapes.pth"
    out = capsys.readouterr().out
    assert "epoch 1/8 step 3: val/ciou " in out and "fit: 3 steps in " in out
    assert "| shapes/val | position |" in out and "| all splits | all |" in out


@pytest.mark.slow
def test_a_config_with_other_data_checkpoints_on_the_pooled_ciou(tmp_path, monkeypatch):
    from tests.datamodules.fixtures import Ref, ReferImage, write_refer

    monkeypatch.chdir(ROOT)
    images = [ReferImage(24, 32, [Ref([(2, 2, 12, 14)], ["the left thing"], split),
                                  Ref([(14, 4, 30, 20)], ["right box"], split)])
              for split in ("train", "train", "val")]  # fmt: skip
    write_refer(tmp_path / "refer", "refcoco", "unc", images)
    split = {"kind": "refcoco", "root": str(tmp_path / "refer")}
    data = {"class_path": "evf.datamodules.MixtureDataModule", "init_args": {
        "train": [{**split, "split": "train"}], "val": [{**split, "split": "val"}], "samples_per_epoch": 2,
        "batch_size": 2, "eval_batch_size": 1, "num_workers": 0, "embedding_cache": None}}  # fmt: skip
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"data": data}))
    run = tmp_path / "run"
    main(["fit", "--config", str(QUICKSTART), "--config", str(tmp_path / "data.yaml"), *CPU,
          "--trainer.max_steps=1", f"--trainer.default_root_dir={run}",
          f"--trainer.logger.init_args.save_dir={run}"])  # fmt: skip
    assert any(name.startswith("best-epoch0-ciou") for name in _ckpts(run))


def test_the_quickstart_starts_from_the_shipped_pretrained_encoder(monkeypatch):
    from evf.module import EVFSAMModule

    monkeypatch.chdir(ROOT)
    model = yaml.safe_load(QUICKSTART.read_text())["model"]
    module = EVFSAMModule(**{k: v for k, v in model.items() if k != "optim"}, use_embedding_cache=True)
    architecture = json.loads(BEIT3_TINY_SHAPES.with_suffix(".json").read_text())["encoder_kwargs"]
    assert module.model.encoder.sub_ln == architecture["sub_ln"]  # the file decides, as pretrained
    shipped = evf.create_encoder("beit3_tiny", checkpoint=BEIT3_TINY_SHAPES, **architecture).state_dict()
    ours = module.model.encoder.state_dict()
    assert ours.keys() == shipped.keys() and all(torch.equal(ours[k], shipped[k]) for k in ours)
