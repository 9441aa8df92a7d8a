"""`evf cache-embeddings` builds the datamodule and the backend only, and reports its rate."""

import re
from pathlib import Path

import evf.module
from evf.cache import EmbeddingStore
from evf.cli import main
from evf.sam_backends import create_backend

from ..sam_backends.official import save_official

ROOT = Path(__file__).resolve().parents[2]


def test_builds_no_training_model_and_prints_images_per_second(tmp_path, monkeypatch, capsys):
    """jsonargparse instantiates every class group it knows, a popped ``model`` too (with the module's
    defaults: BEIT-3-L + SAM-H, a minute of CPU); the tool must not."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"the tool built a training model {args}")

    monkeypatch.setattr(evf.module, "create_model", refuse)
    checkpoint = save_official(create_backend("sam_tiny"), tmp_path / "sam_tiny.pth")
    store = tmp_path / "store"
    data = ["--data.init_args.num_train=2", "--data.init_args.num_val=1", "--data.init_args.num_test=0",
            "--data.init_args.num_workers=0"]  # fmt: skip
    main(["cache-embeddings", "--config", str(ROOT / "configs/quickstart.yaml"), *data,
          f"--model.backend_checkpoint={checkpoint}", f"--out={store}", "--progress=false"])  # fmt: skip
    assert len(EmbeddingStore(store)) == 3
    assert re.search(
        r"3 images encoded in [\d.]+ s \([\d.]+ images/s\), 0 were done", capsys.readouterr().out
    )
