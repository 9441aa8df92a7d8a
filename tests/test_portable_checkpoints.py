"""A run's checkpoint opens from any folder: shipped assets are stored package-relative, other paths
absolute; a path given now wins over the stored one (with a notice); a missing file is one line."""

import json
from pathlib import Path

import pytest
import torch

import evf
from evf.assets import ASSETS
from evf.checkpoint import CheckpointError
from evf.cli import main
from evf.demo.cli import load_model
from evf.io import read_rgb
from evf.paths import portable_path, resolve_path
from tests.helpers import segment

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
QUIET = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.logger=false"]


def test_assets_are_stored_package_relative_and_other_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert portable_path("evf/assets/sam_tiny_shapes.pt") == "evf/assets/sam_tiny_shapes.pt"
    assert portable_path(ASSETS / "sam_tiny_shapes.pt") == "evf/assets/sam_tiny_shapes.pt"
    (tmp_path / "w.pt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert portable_path("w.pt") == str(tmp_path / "w.pt") and portable_path(None) is None
    assert (
        resolve_path("evf/assets/sam_tiny_shapes.pt", "backend_checkpoint") == ASSETS / "sam_tiny_shapes.pt"
    )
    with pytest.raises(CheckpointError, match=r"model.tokenizer: not found: nope.spm \(working directory "):
        resolve_path("nope.spm", "tokenizer")


@pytest.mark.slow
def test_a_run_trained_in_one_folder_validates_predicts_exports_and_serves_the_demo_from_another(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(ROOT)  # the quickstart config names its assets relative to the repository root
    run = tmp_path / "run"
    data = ["--data.init_args.num_train=2", "--data.init_args.num_val=1", "--data.init_args.batch_size=2",
            "--data.init_args.num_workers=0", "--data.init_args.embedding_cache=null"]  # fmt: skip
    main(["fit", "--config", str(QUICKSTART), *data, "--trainer.max_steps=1", "--trainer.accelerator=cpu",
          "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={run}",
          f"--trainer.logger.init_args.save_dir={run}"])  # fmt: skip
    ckpt = next(run.rglob("last.ckpt"))
    stored = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert stored["backend_checkpoint"] == "evf/assets/sam_tiny_shapes.pt"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    main(
        [
            "validate",
            f"--ckpt_path={ckpt}",
            "--data.init_args.num_val=1",
            "--data.init_args.num_workers=0",
            *QUIET,
        ]
    )
    image = ROOT / "tests" / "fixtures" / "v0_checkpoint" / "images" / "a.png"
    main(["predict", f"--ckpt_path={ckpt}", f"--image={image}", "--prompt=the red circle",
          f"--output={elsewhere / 'out'}", "--trainer.accelerator=cpu"])  # fmt: skip
    assert json.loads((elsewhere / "out" / "predictions.json").read_text())[0]["area"] >= 0
    assert [p.name for p in elsewhere.iterdir()] == ["out"]  # predict writes only under --output
    main(["export", f"--ckpt_path={ckpt}", f"--output={elsewhere / 'export'}"])
    exported = evf.load_pretrained(elsewhere / "export")
    demo_model, title = load_model(ckpt_path=ckpt)  # what `evf demo --ckpt_path` serves
    assert "beit3_tiny + sam_tiny" in title
    rgb = read_rgb(image)
    torch.testing.assert_close(
        segment(exported, rgb, ["the red circle"]).logits, segment(demo_model, rgb, ["the red circle"]).logits
    )
    capsys.readouterr()
    missing = elsewhere / "sam_copy.pt"
    with pytest.raises(SystemExit) as exit_:  # the given path wins: it is the one found missing
        main(["validate", f"--ckpt_path={ckpt}", f"--model.backend_checkpoint={missing}", *QUIET])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and "Traceback" not in err
    assert f"model.backend_checkpoint: using {missing} (given), not evf/assets/sam_tiny_shapes.pt" in out
    assert f"evf: error: model.backend_checkpoint: not found: {missing}" in err
