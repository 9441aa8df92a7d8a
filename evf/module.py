"""`EVFSAMModule`: the LightningModule around `EVFSAM` (loss, optimiser, metrics, logging)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from jsonargparse.typing import ClosedUnitInterval
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import FSDPStrategy

from evf.batch import Batch
from evf.cache.keys import CacheMismatchError
from evf.cache.training import RECORD_KEY, check_datamodule_cache, image_encoder_record, restore_image_encoder
from evf.decode import Prediction, check_presence_threshold, decode
from evf.evaluation import EvaluationMetrics
from evf.lightning_compat import attached_trainer
from evf.lora import LoraConfig
from evf.losses import mask_losses, presence_loss
from evf.model import EVFSAM, TrainableParts, create_model
from evf.optim import OptimConfig, lr_schedule, param_groups
from evf.paths import portable_path, resolve_path
from evf.pretrained import ReleaseConfig, load_release_weights
from evf.results import write_results
from evf.run_checkpoint import check_adapters, check_presence_head
from evf.visualize import log_overlays


@dataclass
class LossWeights:
    """Weights of the loss terms: mask BCE and Dice, and the presence head's BCE (models with
    ``presence=True`` only)."""

    bce: float = 1.0
    dice: float = 1.0
    presence: float = 1.0


def _as(cls: type, value: Any) -> Any:
    """None -> defaults; dict (from a checkpoint's hparams) -> dataclass; dataclass -> itself."""
    if value is None:
        return cls()
    if isinstance(value, dict):
        return cls(**value)
    return value


class EVFSAMModule(L.LightningModule):
    """Train and evaluate an EVF-SAM model.

    Args:
        encoder: registered encoder name, e.g. ``beit3_large``.
        backend: registered SAM backend name, e.g. ``sam_vit_h``.
        tokenizer: tokenizer file or directory for the encoder (None = its default).
        encoder_checkpoint: path to the encoder's official weights (None = random init).
        backend_checkpoint: path to the backend's official weights (None = random init).
        encoder_kwargs: extra options of the encoder factory (fusion mode, ...).
        backend_kwargs: extra options of the backend factory.
        trainable: which parts train.
        optim: optimiser and schedule.
        loss: loss weights.
        log_images_every_n_steps: how often a grid of predicted vs true masks goes to TensorBoard
            (0 = never); the first validation batch is always logged.
        num_logged_images: expressions in each logged grid.
        use_embedding_cache: read the SAM image features from the datamodule's embedding cache and
            never build the image encoder (the CLI sets it from ``data.init_args.embedding_cache``).
            Checkpoints then hold no image encoder and say so (see `evf.cache.training`).
        compile_encoder: ``torch.compile`` the multimodal encoder (in place: checkpoint keys unchanged).
        init_from: a released EVF-SAM checkpoint directory (`evf.pretrained`) loaded strictly into
            the model after the per-part checkpoints; its config must name the same encoder and
            backend. (An official release has no presence head: with ``presence`` it starts from init.)
        presence: add the presence head (generalized referring segmentation): it predicts from the
            multimodal feature whether the expression's target is in the image, trained with BCE
            against "the ground-truth mask is non-empty"; below ``presence_threshold`` the
            predicted mask is empty.
        presence_threshold: presence probability under which a mask is emptied (evaluation and
            prediction).
        no_target_masks: with a presence head, what the mask losses do with no-target expressions
            (empty ground truth): ``skip`` them (the presence head answers "absent") or train their
            masks toward ``empty`` too. Without a presence head they always train toward empty
            (the only way such a model can answer "nothing").
        lora: LoRA adapters (`evf.lora`, needs ``evf[lora]``) on the encoder's (and optionally the
            mask decoder's) linear layers, added after ``init_from`` and the part checkpoints are
            loaded. Without ``trainable`` only the adapters, the projector and the presence head
            train (`TrainableParts.for_lora`); a part with adapters always trains its adapters
            only. ``evf export`` merges them into the base weights. None = no adapters (full
            fine-tuning of the ``trainable`` parts).

    TensorBoard gets the hyperparameters with ``hp/<stage>/<split>/<metric>`` metrics (HParams
    view), loss terms, cIoU/gIoU per split, mask overlays and, for encoders with a
    ``cls_attention`` method (BEIT-3), the [CLS]-to-image attention of the last layer (the paper's
    Figure 5). Each evaluation also writes ``results_<stage>.md/.json`` (`evf.results`) to the
    logger's directory.
    """

    def __init__(
        self,
        encoder: str = "beit3_large",
        backend: str = "sam_vit_h",
        tokenizer: str | Path | None = None,
        encoder_checkpoint: str | Path | None = None,
        backend_checkpoint: str | Path | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
        backend_kwargs: dict[str, Any] | None = None,
        trainable: TrainableParts | None = None,
        optim: OptimConfig | None = None,
        loss: LossWeights | None = None,
        log_images_every_n_steps: int = 500,
        num_logged_images: int = 8,
        use_embedding_cache: bool = False,
        compile_encoder: bool = False,
        init_from: str | Path | None = None,
        presence: bool = False,
        presence_threshold: ClosedUnitInterval = 0.5,
        no_target_masks: Literal["skip", "empty"] = "skip",
        lora: LoraConfig | None = None,
    ) -> None:
        super().__init__()
        self.presence_threshold = check_presence_threshold(float(presence_threshold))
        if no_target_masks not in ("skip", "empty"):
            raise ValueError(f"no_target_masks must be 'skip' or 'empty', got {no_target_masks!r}")
        self.skip_no_target_masks = presence and no_target_masks == "skip"
        self.lora = None if lora is None else _as(LoraConfig, lora)
        if trainable is None and self.lora is not None:
            trainable = TrainableParts.for_lora(self.lora)
        self.trainable = _as(TrainableParts, trainable)
        self.optim = _as(OptimConfig, optim)
        self.loss_weights = _as(LossWeights, loss)
        self.save_hyperparameters(logger=False)  # logged with their hp/ metrics by _log_hparams
        self._hparams_logged = False
        # Paths are kept so that the checkpoint opens anywhere (evf.paths); the files are read now.
        stored = {
            "tokenizer": portable_path(tokenizer),
            "encoder_checkpoint": portable_path(encoder_checkpoint),
            "backend_checkpoint": portable_path(backend_checkpoint),
            "init_from": portable_path(init_from),
        }
        tokenizer, encoder_checkpoint, backend_checkpoint, init_from = (
            resolve_path(path, key) for key, path in stored.items()
        )
        # Checkpoints keep plain dicts (readable with weights_only=True), not dataclass objects.
        self.hparams.update(
            **stored,
            trainable=asdict(self.trainable),
            optim=asdict(self.optim),
            loss=asdict(self.loss_weights),
            presence_threshold=float(presence_threshold),
            lora=None if self.lora is None else asdict(self.lora),
        )
        self.log_images_every_n_steps = log_images_every_n_steps
        self.num_logged_images = num_logged_images
        self.model: EVFSAM = create_model(
            encoder,
            backend,
            trainable=self.trainable,
            encoder_kwargs={
                "tokenizer": tokenizer,
                "checkpoint": encoder_checkpoint,
                **(encoder_kwargs or {}),
            },
            backend_kwargs={
                "checkpoint": backend_checkpoint,
                **(backend_kwargs or {}),
                **({"image_encoder": False} if use_embedding_cache else {}),
            },
            presence=presence,
        )
        if decided := self.model.encoder.checkpoint_architecture():  # reopens without the encoder file
            self.hparams["encoder_kwargs"] = {**decided, **(encoder_kwargs or {})}
        if use_embedding_cache and self.trainable.image_encoder:
            raise ValueError("use_embedding_cache needs a frozen SAM image encoder (trainable.image_encoder)")
        if init_from is not None:
            release = ReleaseConfig.read(init_from)
            release.check_names(encoder, backend, init_from)
            load_release_weights(self.model, init_from, release)
        if self.lora is not None:  # after every base weight is in (adapted layers move to *.base_layer.*)
            self.model.add_lora(self.lora)
        if compile_encoder:
            self.model.encoder.compile()
        self.val_metrics = EvaluationMetrics()
        self.test_metrics = EvaluationMetrics()

    # ---- embedding cache: checks and the checkpoint record (evf.cache.training) ---------------
    def setup(self, stage: str) -> None:
        check_datamodule_cache(self)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        record = image_encoder_record(self)
        if record is not None:
            checkpoint[RECORD_KEY] = record

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_presence_head(self.model, checkpoint.get("state_dict", {}))
        check_adapters(self.model, checkpoint.get("state_dict", {}))
        restore_image_encoder(self, checkpoint)

    @classmethod
    def load_for_inference(
        cls,
        ckpt_path: str | Path,
        backend_checkpoint: str | Path | None = None,
        tokenizer: str | Path | None = None,
        map_location: str | torch.device = "cpu",
    ) -> EVFSAMModule:
        """A trained run for inference and export: every weight comes from ``ckpt_path`` (the run's
        part checkpoints and ``init_from`` release are not read), with the SAM image encoder built.

        Args:
            ckpt_path: our Lightning checkpoint.
            backend_checkpoint: for a run trained from an embedding cache (its checkpoint holds no
                SAM image encoder), the SAM weights the cache was built from (their hash is checked).
            tokenizer: the encoder's tokenizer file or directory (default: the one the run used).
            map_location: where the weights are loaded.
        """
        overrides: dict[str, Any] = {
            "encoder_checkpoint": None,
            "backend_checkpoint": backend_checkpoint,
            "init_from": None,
            "use_embedding_cache": False,
        }
        if tokenizer is not None:
            overrides["tokenizer"] = tokenizer
        try:
            return cls.load_from_checkpoint(ckpt_path, map_location=map_location, **overrides)
        except CacheMismatchError as err:
            raise CacheMismatchError(
                f"{ckpt_path} was trained from an embedding cache and holds no SAM image encoder: pass "
                f"--backend_checkpoint with the SAM weights the cache was built from. ({err})"
            ) from err

    # ---- steps -------------------------------------------------------------------------------
    def _decode(self, batch: Batch) -> list[Prediction]:
        """Per image, logits ``[n_i,H_i,W_i]`` at the original resolution, masks and scores: every
        step goes through `evf.decode.decode`, the path prediction takes too."""
        return decode(self.model, batch, presence_threshold=self.presence_threshold)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        predictions = self._decode(batch)
        logits = [p.logits for p in predictions]
        present = [target.flatten(1).any(1) for target in batch.masks]
        if self.skip_no_target_masks:  # the presence head alone answers "absent"
            terms = mask_losses(
                [lg[keep] for lg, keep in zip(logits, present, strict=True)],
                [t[keep] for t, keep in zip(batch.masks, present, strict=True)],
                batch.void,
            )
        else:
            terms = mask_losses(logits, batch.masks, batch.void)
        loss = self.loss_weights.bce * terms["bce"] + self.loss_weights.dice * terms["dice"]
        if self.model.has_presence:
            presence_logits = torch.cat([p.presence_logits for p in predictions])
            terms["presence"] = presence_loss(presence_logits, torch.cat(present))
            loss = loss + self.loss_weights.presence * terms["presence"]
        n = len(batch.texts)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=n)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        every = self.log_images_every_n_steps
        if every and self.global_step % every == 0:
            self._log_overlays("train", batch, logits)
        return loss

    def _eval_step(self, stage: str, batch: Batch, batch_idx: int, dataloader_idx: int) -> None:
        predictions = self._decode(batch) if batch.num_images else []
        (self.val_metrics if stage == "val" else self.test_metrics).update(dataloader_idx, batch, predictions)
        if batch_idx == 0 and dataloader_idx == 0 and predictions:
            self._log_overlays(stage, batch, [p.logits for p in predictions])

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, batch_idx, dataloader_idx)

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, batch_idx, dataloader_idx)

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> list[Prediction]:
        """One `Prediction` per image of the batch (none for a batch whose every image failed to
        load: ``batch.failures`` lists those)."""
        return self._decode(batch)

    # ---- metrics: one ReferringIoU per named split -------------------------------------------
    def _split_names(self, stage: str) -> list[str]:
        trainer = attached_trainer(self)
        dm = None if trainer is None else trainer.datamodule
        if dm is not None and hasattr(dm, "split_names"):
            return dm.split_names(stage)
        loaders = self.trainer.val_dataloaders if stage == "validate" else self.trainer.test_dataloaders
        count = len(loaders) if isinstance(loaders, list | tuple) else 1
        return [f"split{i}" for i in range(count)]

    def _split_kinds(self, stage: str) -> list[tuple[str, ...]]:
        """Per split, the expression kinds it declares (empty without a datamodule that says)."""
        trainer = attached_trainer(self)
        dm = None if trainer is None else trainer.datamodule
        if dm is not None and hasattr(dm, "split_kinds"):
            return dm.split_kinds(stage)
        return [() for _ in self._split_names(stage)]

    def _reset_metrics(self, stage: str, prefix: str) -> None:
        metrics = self.val_metrics if prefix == "val" else self.test_metrics
        trainer = attached_trainer(self)
        dm = None if trainer is None else trainer.datamodule
        # every process built the same index: its dropped records are counted on one process
        index_skipped = dm.split_index_skipped(stage) if hasattr(dm, "split_index_skipped") else []
        if trainer is not None and not trainer.is_global_zero:
            index_skipped = []
        metrics.reset(len(self._split_names(stage)), self._split_kinds(stage), self.device, index_skipped)

    def _log_metrics(self, stage: str, prefix: str) -> dict[str, float]:
        """Log the stage's metrics (`EvaluationMetrics.results`: per split, per declared kind, and
        ``<prefix>/<metric>`` over every split together, what configs monitor: it exists whatever
        the data), each with its ``hp/`` copy; rank 0 writes the results table."""
        metrics = self.val_metrics if prefix == "val" else self.test_metrics
        results, values = metrics.results(self._split_names(stage), prefix)
        self.log_dict(results, add_dataloader_idx=False, sync_dist=False)
        if self.trainer.sanity_checking or not self.trainer.is_global_zero or not values.per_split:
            return results
        for logger in self.loggers:  # the HParams view's metrics (not in callback_metrics / results)
            if isinstance(logger, TensorBoardLogger):
                logger.log_metrics({f"hp/{k}": v for k, v in results.items()}, step=self.global_step)
        log_dir = getattr(self.logger, "log_dir", None)
        if log_dir:
            write_results(values, stage, log_dir, model=f"{self.hparams.encoder} + {self.hparams.backend}")
        return results

    def _log_hparams(self, stage: str, prefix: str) -> None:
        """Once per run: hyperparameters with ``hp/<prefix>/<split>/<metric>`` metrics (NaN until the
        first evaluation), so TensorBoard's HParams view lines up the runs of a sweep."""
        if self._hparams_logged:
            return
        self._hparams_logged = True
        names = self._split_names(stage)
        metrics = {f"hp/{prefix}/{name}/{key}": float("nan") for name in names for key in ("ciou", "giou")}
        metrics.update({f"hp/{prefix}/{key}": float("nan") for key in ("ciou", "giou")})
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(self.hparams, metrics)
            else:
                logger.log_hyperparams(self.hparams)

    def on_fit_start(self) -> None:
        self._log_hparams("validate", "val")

    def on_validation_start(self) -> None:
        self._log_hparams("validate", "val")

    def on_test_start(self) -> None:
        self._log_hparams("test", "test")

    def on_validation_epoch_start(self) -> None:
        self._reset_metrics("validate", "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("validate", "val")

    def on_test_epoch_start(self) -> None:
        self._reset_metrics("test", "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", "test")

    # ---- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> dict:
        opt = torch.optim.AdamW(self._param_groups(), lr=self.optim.lr, betas=self.optim.betas)
        sched = lr_schedule(opt, self.optim, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def clip_gradients(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip by norm under FSDP too (the paper configs clip at 1.0). Lightning's FSDP precision
        plugin refuses (Lightning issue #19235): the norm spans every rank's shards, and only FSDP's
        own ``clip_grad_norm_`` on the wrapped root module computes it. Overridden here rather than
        the ``configure_gradient_clipping`` hook, which DeepSpeed's strategy warns about."""
        strategy, by_norm = self.trainer.strategy, gradient_clip_algorithm in (None, "norm")
        if isinstance(strategy, FSDPStrategy) and gradient_clip_val and by_norm:
            strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _param_groups(self) -> list[dict]:
        """`evf.optim.param_groups` of this module's model and optimiser settings."""
        return param_groups(self.model, self.optim)

    # ---- logging -------------------------------------------------------------------------------
    def _log_overlays(self, stage: str, batch: Batch, logits: list[torch.Tensor]) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if self.num_logged_images > 0 and hasattr(experiment, "add_image") and self.trainer.is_global_zero:
            log_overlays(
                experiment, self.model, batch, logits, f"{stage}/", self.global_step, self.num_logged_images
            )
