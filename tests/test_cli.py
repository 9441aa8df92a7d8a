import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evf.cli import EVFCLI, main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))

TINY_FIT = [
    "--trainer.accelerator=cpu", "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
    "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
    "--data.init_args.num_train=4", "--data.init_args.num_val=2", "--data.init_args.batch_size=2",
    "--data.init_args.eval_batch_size=2", "--data.init_args.num_workers=0",
]  # fmt: skip


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_parses_with_the_real_cli(config):
    # Full-size models build on the meta device (no weights allocated); the trainer is put on the
    # CPU so GPU/multi-process configs instantiate here too. Everything else is the shipped file.
    on_cpu = [
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.strategy=auto",
        "--trainer.num_nodes=1",
    ]
    with torch.device("meta"):
        cli = EVFCLI(args=["--config", str(config), *on_cpu], run=False)
    assert cli.model.hparams.encoder == cli.datamodule.encoder  # links applied
    assert cli.model.hparams.backend == cli.datamodule.backend


def test_misspelt_key_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        EVFCLI(args=["fit", "--config", str(ROOT / "configs/quickstart.yaml"), "--model.optim.lrr=0.1"])
    assert "lrr" in capsys.readouterr().err


def test_help_lists_subcommands_and_tools():
    out = subprocess.run(
        [sys.executable, "-m", "evf.cli", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0
    for word in ("fit", "validate", "test", "predict", "extra tools"):
        assert word in out.stdout
    lines = out.stdout.splitlines()
    for tool in ("data-check", "demo", "predict-video", "export"):  # the tools table, one tool per line
        assert any(line.strip().startswith(f"evf {tool} ") for line in lines), tool


@pytest.mark.slow
def test_fit_then_predict_through_the_cli(tmp_path):
    run_dir = tmp_path / "run"
    main(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), f"--trainer.default_root_dir={run_dir}",
          f"--trainer.logger.init_args.save_dir={run_dir}", "--data.init_args.embedding_cache=null",
          *TINY_FIT])  # fmt: skip
    ckpt = next(run_dir.rglob("last.ckpt"))
    events = list(run_dir.rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file written"

    image = tmp_path / "shapes.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "pred"
    main(["predict", f"--ckpt_path={ckpt}", "--image", str(image), "--prompt", "the red circle",
          "--prompt", "the square on the left", f"--output={out}", "--trainer.accelerator=cpu",
          "--trainer.logger=false", "--trainer.enable_progress_bar=false"])  # fmt: skip
    for k in range(2):
        mask = np.asarray(Image.open(out / f"shapes_{k}_mask.png"))
        assert mask.shape == (90, 120) and set(np.unique(mask)) <= {0, 255}
        assert np.asarray(Image.open(out / f"shapes_{k}_overlay.png")).shape == (90, 120, 3)
    records = json.loads((out / "predictions.json").read_text())
    assert [r["prompt"] for r in records] == ["the red circle", "the square on the left"]


def test_an_anticipated_error_is_one_line_without_a_traceback(tmp_path, capsys):
    missing = f"--data.init_args.embedding_cache={tmp_path / 'none'}"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/quickstart.yaml", missing, "--trainer.max_steps=1",
              "--trainer.logger=false"])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"evf: error: {tmp_path / 'none'}: no embedding cache here" in err and "Traceback" not in err


@pytest.mark.slow
def test_an_unreadable_image_ends_validate_in_one_line_also_from_a_worker(tmp_path, capsys):
    import yaml

    from tests.datamodules.custom_fixtures import write_jsonl_from_shapes

    root = tmp_path / "data"
    write_jsonl_from_shapes(root, {"val": 2})
    image = root / "images" / "val_0001.png"
    image.write_bytes(image.read_bytes()[:200])  # truncated
    spec = {"kind": "referring_jsonl", "root": str(root), "split": "val"}
    options = {"train": [spec], "val": [spec], "samples_per_epoch": 2, "eval_batch_size": 2, "num_workers": 1}
    data = {"class_path": "evf.datamodules.MixtureDataModule", "init_args": options}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"data": data}))
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", str(tmp_path / "data.yaml"), "--model.encoder=beit3_tiny",
              "--model.backend=sam_tiny", "--trainer.accelerator=cpu", "--trainer.logger=false",
              "--trainer.enable_progress_bar=false"])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("evf: error:")]
    assert str(image) in line and "worker" not in line
