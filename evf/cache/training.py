"""The embedding cache on the training side: the checks `EVFSAMModule` runs, its checkpoint record.

* `check_datamodule_cache` (at ``setup``): a datamodule with a store must hold exactly this model's
  image features (`CacheKey` compared field by field); a model in cache mode needs such a store.
* `image_encoder_record` / `restore_image_encoder` (checkpoint hooks): a model trained from a cache
  has no image encoder, so its checkpoints hold none. They say so under `RECORD_KEY`, with the
  weights hash of the image encoder the features came from. A model built *with* an image encoder
  (e.g. for prediction, from the same ``backend_checkpoint``) can load such a checkpoint: its own
  image-encoder tensors fill the gap, after their hash is checked against the record.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import nn

from evf.cache.keys import CacheKey, CacheMismatchError, cache_key
from evf.lightning_compat import attached_trainer

RECORD_KEY = "evf_image_encoder"
"""Checkpoint entry of a model trained from an embedding cache (absent otherwise)."""


def module_cache_key(module: L.LightningModule) -> CacheKey:
    """The key of the features ``module``'s backend computes (or computed, in cache mode)."""
    hp = module.hparams
    return cache_key(module.model.backend, hp.backend, hp.backend_kwargs)


def check_datamodule_cache(module: L.LightningModule) -> None:
    """Refuse a store that does not match the model, or cache mode without a store.

    Raises:
        ValueError: cache mode without a store, or a store with a trainable image encoder.
        CacheMismatchError: the store was built for another backend, weights or preprocessing.
    """
    trainer = attached_trainer(module)
    datamodule = None if trainer is None else trainer.datamodule
    store = getattr(datamodule, "embedding_store", None)
    if store is None:
        if module.hparams.get("use_embedding_cache"):
            raise ValueError(
                "model.use_embedding_cache is true but the datamodule has no embedding cache: set "
                "data.init_args.embedding_cache to a store built by `evf cache-embeddings`"
            )
        return
    if module.model.trainable.image_encoder:
        raise ValueError(
            "the SAM image encoder trains (trainable.image_encoder: true): cached features would be stale"
        )
    store.check(module_cache_key(module))


def _prefix(root: nn.Module, part: nn.Module) -> str:
    return next(name + "." for name, m in root.named_modules() if m is part)


def image_encoder_record(module: L.LightningModule) -> dict[str, Any] | None:
    """What a checkpoint of ``module`` says about its image encoder (None: it is in the state dict)."""
    backend = module.model.backend
    if backend.has_image_encoder:
        return None
    hp = module.hparams
    return {
        "included": False,
        "reason": "trained from an embedding cache: the frozen SAM image encoder was never built",
        "backend": hp.backend,
        "backend_checkpoint": None if hp.backend_checkpoint is None else str(hp.backend_checkpoint),
        "weights_hash": backend.image_encoder_hash(),
        "restore": "load with use_embedding_cache=False and backend_checkpoint = weights of this hash",
    }


def restore_image_encoder(module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
    """Fill a cache-mode checkpoint's missing image encoder from ``module``'s own, if it is the same.

    Raises:
        CacheMismatchError: ``module``'s image encoder is not the one the training features came from.
    """
    record = checkpoint.get(RECORD_KEY)
    backend = module.model.backend
    if record is None or not backend.has_image_encoder:
        return
    ours = backend.image_encoder_hash()
    if ours != record["weights_hash"]:
        raise CacheMismatchError(
            "this checkpoint was trained from cached features of image-encoder weights "
            f"{record['weights_hash']} (backend_checkpoint {record['backend_checkpoint']}) and holds no "
            f"image encoder; this model's image encoder hashes to {ours}: set model.backend_checkpoint "
            "to the weights the cache was built with"
        )
    prefix = _prefix(module, backend.image_encoder)
    state = checkpoint["state_dict"]
    for name, tensor in backend.image_encoder.state_dict().items():
        state.setdefault(prefix + name, tensor)
