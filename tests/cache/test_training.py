"""Training from an embedding cache: same logits and loss as encoding on the fly, refusals, checkpoints."""

from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from evf.batch import Batch
from evf.cache import CacheError, CacheMismatchError, EmbeddingStore
from evf.cache.keys import cache_key
from evf.cache.training import RECORD_KEY, module_cache_key
from evf.cli import main
from evf.datamodules import MixtureDataModule
from evf.decode import decode
from evf.losses import mask_losses
from evf.module import EVFSAMModule
from evf.sam_backends import create_backend

from ..sam_backends.official import save_official
from .conftest import shapes_dm

ROOT = Path(__file__).resolve().parents[2]
ENCODER_KEYS = "backend.sam.image_encoder."


def _module(checkpoint, **kwargs) -> EVFSAMModule:
    kwargs.setdefault("num_logged_images", 0)
    return EVFSAMModule("beit3_tiny", "sam_tiny", backend_checkpoint=str(checkpoint), **kwargs)


def _pair(checkpoint) -> tuple[EVFSAMModule, EVFSAMModule]:
    """The same weights twice: encoding on the fly, and in cache mode (no image encoder)."""
    live = _module(checkpoint).eval()
    cached = _module(checkpoint, use_embedding_cache=True).eval()
    state = {k: v for k, v in live.model.state_dict().items() if not k.startswith(ENCODER_KEYS)}
    cached.model.load_state_dict(state)
    return live, cached


def _batch(**dm_kwargs) -> Batch:
    dm = shapes_dm(**dm_kwargs)
    val = dm.eval_datasets("validate")["shapes/val"]
    train = dm.train_dataset()
    return dm.builder([train.sample(0, 0), train.sample(1, 0), val.sample(0, 0)])


def _loss(module, batch) -> tuple[list[torch.Tensor], torch.Tensor]:
    with torch.no_grad():
        logits = [p.logits for p in decode(module.model, batch)]
    terms = mask_losses(logits, batch.masks)
    return logits, terms["bce"] + terms["dice"]


@pytest.mark.parametrize(("dtype", "tol"), [("fp32", 1e-5), ("bf16", 2e-3)])
def test_cached_features_give_the_logits_and_loss_of_encoding_on_the_fly(
    dtype, tol, sam_checkpoint, store_factory
):  # noqa: E501
    root = store_factory(dtype)
    live, cached = _pair(sam_checkpoint)
    live_batch, cached_batch = _batch(), _batch(embedding_cache=root)
    assert cached_batch.sam_pixels is None and live_batch.image_features is None
    assert (
        cached_batch.image_features["image_embeddings"].dtype
        == EmbeddingStore(root).read(next(iter(EmbeddingStore(root).rows)))["image_embeddings"].dtype
    )
    live_logits, live_loss = _loss(live, live_batch)
    cached_logits, cached_loss = _loss(cached, cached_batch)
    for a, b in zip(live_logits, cached_logits, strict=True):
        torch.testing.assert_close(b, a, atol=tol, rtol=tol)
    torch.testing.assert_close(cached_loss, live_loss, atol=tol, rtol=tol)


def test_cache_mode_builds_no_image_encoder(sam_checkpoint):
    module = _module(sam_checkpoint, use_embedding_cache=True)
    assert not module.model.backend.has_image_encoder
    assert not any(".image_encoder." in k for k in module.state_dict())
    with pytest.raises(ValueError, match="frozen SAM image encoder"):
        _module(sam_checkpoint, use_embedding_cache=True, trainable={"image_encoder": True})


def test_store_of_other_weights_is_refused_at_setup(sam_checkpoint, store_factory, tmp_path):
    root = store_factory()
    torch.manual_seed(7)
    other = save_official(create_backend("sam_tiny"), tmp_path / "other.pth")
    module = _module(other, use_embedding_cache=True)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, limit_val_batches=1)
    with pytest.raises(CacheMismatchError, match=r"(?s)cache vs model.*weights: '[0-9a-f]{64}' vs"):
        trainer.validate(module, datamodule=shapes_dm(embedding_cache=root))


def test_store_of_other_preprocessing_is_refused(sam_checkpoint, store_factory):
    backend = create_backend("sam_tiny", checkpoint=sam_checkpoint)
    key = cache_key(backend, "sam_tiny")
    changed = replace(key, preprocessing={**key.preprocessing, "interpolation": "bicubic"})
    store = EmbeddingStore(store_factory(key=changed))
    with pytest.raises(CacheMismatchError, match="preprocessing.interpolation: 'bicubic' vs 'bilinear'"):
        store.check(module_cache_key(_module(sam_checkpoint, use_embedding_cache=True)))


def test_store_of_another_backend_is_refused(store_factory, tmp_path):
    store = EmbeddingStore(store_factory())
    weights = str(save_official(create_backend("efficient_sam_tiny"), tmp_path / "effi.pt"))
    module = EVFSAMModule(
        "beit3_tiny", "efficient_sam_tiny", backend_checkpoint=weights, use_embedding_cache=True
    )
    with pytest.raises(CacheMismatchError) as err:
        store.check(module_cache_key(module))
    message = str(err.value)
    expected = ["backend: 'sam_tiny' vs 'efficient_sam_tiny'", "weights:", "preprocessing.resize", "features"]
    assert all(line in message for line in expected), message


def test_cache_mode_without_a_store_is_refused(sam_checkpoint):
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, limit_val_batches=1)
    with pytest.raises(ValueError, match="data.init_args.embedding_cache"):
        trainer.validate(_module(sam_checkpoint, use_embedding_cache=True), datamodule=shapes_dm())


def test_changed_image_is_refused(store_factory):
    root = store_factory()
    with pytest.raises(CacheError, match="shapes-train-s0-000000 .* is not in the embedding cache"):
        _batch(embedding_cache=root, image_size=(100, 110))  # same ids, other pictures


def test_augmentation_is_refused(tmp_path):
    with pytest.raises(ValueError, match="augments its images"):
        _ = MixtureDataModule(augment=True, embedding_cache=tmp_path).embedding_store


def test_cache_mode_checkpoint_holds_no_image_encoder_and_says_so(sam_checkpoint, store_factory, tmp_path):
    root = store_factory("fp32")
    live, cached = _pair(sam_checkpoint)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(cached)
    path = tmp_path / "cache_mode.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert not any(".image_encoder." in k for k in checkpoint["state_dict"])
    record = checkpoint[RECORD_KEY]
    assert record["included"] is False and record["weights_hash"] == live.model.backend.image_encoder_hash()
    # reloaded as it was trained: still without image encoder
    assert not EVFSAMModule.load_from_checkpoint(path).model.backend.has_image_encoder
    # reloaded with the image encoder of the same weights: predicts from pixels as it trained from the cache
    restored = EVFSAMModule.load_from_checkpoint(path, use_embedding_cache=False).eval()
    from_pixels, from_cache = _loss(restored, _batch())[0], _loss(cached, _batch(embedding_cache=root))[0]
    for a, b in zip(from_pixels, from_cache, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.manual_seed(7)
    other = save_official(create_backend("sam_tiny"), tmp_path / "other.pth")
    with pytest.raises(CacheMismatchError, match="holds no image encoder"):
        EVFSAMModule.load_from_checkpoint(path, use_embedding_cache=False, backend_checkpoint=str(other))


@pytest.mark.slow
def test_cli_builds_the_cache_then_fits_from_it(sam_checkpoint, tmp_path):
    store, run = tmp_path / "store", tmp_path / "run"
    data = ["--data.init_args.num_train=4", "--data.init_args.num_val=2", "--data.init_args.num_test=2",
            "--data.init_args.batch_size=2", "--data.init_args.eval_batch_size=2",
            "--data.init_args.num_workers=0"]  # fmt: skip
    model = ["--config", str(ROOT / "configs/quickstart.yaml"), "--model.trainable.image_encoder=false",
             f"--model.backend_checkpoint={sam_checkpoint}"]  # fmt: skip
    main(["cache-embeddings", *model, *data, f"--out={store}", "--progress=false"])
    assert len(EmbeddingStore(store)) == 8
    main(["fit", *model, *data, f"--data.init_args.embedding_cache={store}", "--trainer.max_steps=2",
          "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
          f"--trainer.default_root_dir={run}", f"--trainer.logger.init_args.save_dir={run}"])  # fmt: skip
    last = next(run.rglob("last.ckpt"))
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["hyper_parameters"]["use_embedding_cache"] is True
    assert checkpoint[RECORD_KEY]["included"] is False
    # prediction from pixels: the image encoder is rebuilt from backend_checkpoint and checked
    image = tmp_path / "scene.png"
    Image.fromarray(shapes_dm().train_dataset().load_image(0)).save(image)
    main(["predict", f"--ckpt_path={last}", "--image", str(image), "--prompt", "the red circle",
          f"--output={tmp_path / 'pred'}", "--trainer.accelerator=cpu", "--trainer.logger=false",
          "--trainer.enable_progress_bar=false"])  # fmt: skip
    assert (tmp_path / "pred" / "scene_0_mask.png").is_file()
