"""`EVFSAMModule`: the LightningModule around `EVFSAM` (loss, optimiser, metrics, logging)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from evf.batch import Batch
from evf.cache.training import RECORD_KEY, check_datamodule_cache, image_encoder_record, restore_image_encoder
from evf.decode import Prediction, decode
from evf.lightning_compat import attached_trainer
from evf.losses import mask_losses
from evf.metrics import ReferringIoU, pooled
from evf.model import EVFSAM, TrainableParts, create_model
from evf.pretrained import ReleaseConfig, load_release_weights
from evf.results import write_results
from evf.visualize import attention_grid, images_from_pixels, overlay_grid


@dataclass
class OptimConfig:
    """AdamW with linear decay (the paper's schedule) and optional linear warmup.

    Attributes:
        lr: peak learning rate.
        weight_decay: AdamW weight decay, applied to weight matrices only (not to norms, biases,
            embeddings-as-tokens).
        betas: AdamW betas.
        warmup_steps: linear warmup from 0 to ``lr``.
        schedule: ``linear`` decays to 0 at the last step; ``constant`` keeps ``lr``.
        image_encoder_lr_scale: lr multiplier for the SAM image encoder when it trains.
        decoder_lr_scale: lr multiplier for SAM's prompt encoder and mask decoder, which arrive
            pretrained while the multimodal encoder and the projector may start from scratch.
        decoder_start_step: SAM's prompt encoder and mask decoder keep their weights (lr 0) for this
            many steps, then follow the schedule: the text side first learns to prompt the
            pretrained decoder, before the decoder adapts to it.
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0
    schedule: Literal["linear", "constant"] = "linear"
    image_encoder_lr_scale: float = 1.0
    decoder_lr_scale: float = 1.0
    decoder_start_step: int = 0


@dataclass
class LossWeights:
    bce: float = 1.0
    dice: float = 1.0


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
            backend.

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
    ) -> None:
        super().__init__()
        self.trainable = _as(TrainableParts, trainable)
        self.optim = _as(OptimConfig, optim)
        self.loss_weights = _as(LossWeights, loss)
        self.save_hyperparameters(logger=False)  # logged with their hp/ metrics by _log_hparams
        self._hparams_logged = False
        # Checkpoints keep plain dicts (readable with weights_only=True), not dataclass objects.
        self.hparams.update(
            trainable=asdict(self.trainable), optim=asdict(self.optim), loss=asdict(self.loss_weights)
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
        )
        if use_embedding_cache and self.trainable.image_encoder:
            raise ValueError("use_embedding_cache needs a frozen SAM image encoder (trainable.image_encoder)")
        if init_from is not None:
            release = ReleaseConfig.read(init_from)
            release.check_names(encoder, backend, init_from)
            load_release_weights(self.model, init_from, release)
        if compile_encoder:
            self.model.encoder.compile()
        self.val_metrics = nn.ModuleList()
        self.test_metrics = nn.ModuleList()

    # ---- embedding cache: checks and the checkpoint record (evf.cache.training) ---------------
    def setup(self, stage: str) -> None:
        check_datamodule_cache(self)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        record = image_encoder_record(self)
        if record is not None:
            checkpoint[RECORD_KEY] = record

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_image_encoder(self, checkpoint)

    # ---- steps -------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> list[Prediction]:
        """Per image, logits ``[n_i,H_i,W_i]`` at the original resolution, masks and scores
        (`evf.decode.decode`: the path prediction takes too)."""
        return decode(self.model, batch)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        logits = [p.logits for p in self(batch)]
        terms = mask_losses(logits, batch.masks)
        loss = self.loss_weights.bce * terms["bce"] + self.loss_weights.dice * terms["dice"]
        n = len(batch.texts)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=n)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        every = self.log_images_every_n_steps
        if every and self.global_step % every == 0:
            self._log_overlays("train", batch, logits)
        return loss

    def _eval_step(self, stage: str, batch: Batch, batch_idx: int, dataloader_idx: int) -> None:
        predictions = self(batch)
        metric = (self.val_metrics if stage == "val" else self.test_metrics)[dataloader_idx]
        for prediction, target in zip(predictions, batch.masks, strict=True):
            metric.update(prediction.masks, target)
        if batch_idx == 0 and dataloader_idx == 0:
            self._log_overlays(stage, batch, [p.logits for p in predictions])

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, batch_idx, dataloader_idx)

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, batch_idx, dataloader_idx)

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> list[Prediction]:
        """One `Prediction` per image of the batch (none for a batch whose every image failed to
        load: ``batch.failures`` lists those)."""
        return self(batch)

    # ---- metrics: one ReferringIoU per named split -------------------------------------------
    def _split_names(self, stage: str) -> list[str]:
        trainer = attached_trainer(self)
        dm = None if trainer is None else trainer.datamodule
        if dm is not None and hasattr(dm, "split_names"):
            return dm.split_names(stage)
        loaders = self.trainer.val_dataloaders if stage == "validate" else self.trainer.test_dataloaders
        count = len(loaders) if isinstance(loaders, list | tuple) else 1
        return [f"split{i}" for i in range(count)]

    def _reset_metrics(self, metrics: nn.ModuleList, stage: str) -> None:
        names = self._split_names(stage)
        while len(metrics) < len(names):
            metrics.append(ReferringIoU().to(self.device))
        for m in metrics:
            m.reset()

    def _log_metrics(self, metrics: nn.ModuleList, stage: str, prefix: str) -> dict[str, float]:
        """Log ``<prefix>/<split>/<metric>`` and ``<prefix>/<metric>`` over every split together (what
        configs monitor: it exists whatever the data), each with its ``hp/`` copy; rank 0 writes the
        results table."""
        names = self._split_names(stage)
        per_split = {
            name: {key: float(value) for key, value in metric.compute().items()}
            for name, metric in zip(names, metrics, strict=False)
        }
        results = {f"{prefix}/{name}/{key}": v for name, vals in per_split.items() for key, v in vals.items()}
        if per_split:
            overall = pooled(list(metrics)[: len(names)]).compute()
            results.update({f"{prefix}/{key}": float(value) for key, value in overall.items()})
        self.log_dict(results, add_dataloader_idx=False, sync_dist=False)
        if self.trainer.sanity_checking or not self.trainer.is_global_zero or not per_split:
            return results
        for logger in self.loggers:  # the HParams view's metrics (not in callback_metrics / results)
            if isinstance(logger, TensorBoardLogger):
                logger.log_metrics({f"hp/{k}": v for k, v in results.items()}, step=self.global_step)
        log_dir = getattr(self.logger, "log_dir", None)
        if log_dir:
            write_results(per_split, stage, log_dir, model=f"{self.hparams.encoder} + {self.hparams.backend}")
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
        self._reset_metrics(self.val_metrics, "validate")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "validate", "val")

    def on_test_epoch_start(self) -> None:
        self._reset_metrics(self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test", "test")

    # ---- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> dict:
        groups = self._param_groups()
        opt = torch.optim.AdamW(groups, lr=self.optim.lr, betas=self.optim.betas)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup, schedule, hold = self.optim.warmup_steps, self.optim.schedule, self.optim.decoder_start_step

        def factor(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            if schedule == "constant":
                return 1.0
            return max(0.0, (total - step) / max(total - warmup, 1))

        def decoder_factor(step: int) -> float:  # held at 0 (AdamW then leaves the weights alone)
            return 0.0 if step < hold else factor(step)

        factors = [decoder_factor if g["part"] == "decoder" else factor for g in groups]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factors)
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
        """Only trainable parts; weight decay on matrices only; SAM's parts at their own lr scales.
        Each group names its part kind (``image_encoder``, ``decoder``: SAM's prompt encoder and mask
        decoder, ``text``: the multimodal encoder and the projector) for the schedule."""
        kinds = {"image_encoder": "image_encoder", "prompt_encoder": "decoder", "mask_decoder": "decoder"}
        scales = {"image_encoder": self.optim.image_encoder_lr_scale, "decoder": self.optim.decoder_lr_scale}
        groups: dict[tuple[bool, str], list[nn.Parameter]] = {}
        for part, module in self.model.parts().items():
            kind = kinds.get(part, "text")
            for p in module.parameters():
                if p.requires_grad:
                    groups.setdefault((p.ndim >= 2, kind), []).append(p)
        if not groups:
            raise ValueError("nothing to train: every part is frozen (see `trainable`)")
        return [
            {
                "params": ps,
                "weight_decay": self.optim.weight_decay if decay else 0.0,
                "lr": self.optim.lr * scales.get(kind, 1.0),
                "part": kind,
            }
            for (decay, kind), ps in groups.items()
        ]

    # ---- logging -------------------------------------------------------------------------------
    def _log_overlays(self, stage: str, batch: Batch, logits: list[torch.Tensor]) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if (
            self.num_logged_images <= 0
            or not hasattr(experiment, "add_image")
            or not self.trainer.is_global_zero
        ):
            return
        if batch.sam_pixels is not None:
            pixels, spec = batch.sam_pixels, self.model.backend.info.image
            input_sizes = batch.input_sizes
        else:  # features came from a cache: show the encoder's view of the image instead
            pixels, spec = batch.encoder_pixels, self.model.encoder.preprocessor.image
            input_sizes = [(spec.size, spec.size)] * batch.num_images
        images = images_from_pixels(pixels, spec, input_sizes, batch.original_sizes)
        grid = overlay_grid(images, batch, [lg.detach().float() for lg in logits], self.num_logged_images)
        experiment.add_image(f"{stage}/overlays", grid, self.global_step, dataformats="HWC")
        cls_attention = getattr(self.model.encoder, "cls_attention", None)
        rows = slice(0, min(self.num_logged_images, len(batch.texts)))
        inputs = (batch.input_ids[rows], batch.attention_mask[rows], batch.image_index[rows])
        attention = None if cls_attention is None else cls_attention(batch.encoder_pixels, *inputs)
        if attention is not None:
            grid = attention_grid(images, batch, attention)
            experiment.add_image(f"{stage}/attention", grid, self.global_step, dataformats="HWC")
