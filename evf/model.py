"""`EVFSAM`: multimodal encoder -> projector -> one sparse prompt token -> SAM backend.

A pure ``nn.Module``: no Lightning, no losses, no preprocessing. The SAM image encoder runs once
per image (`EVFSAM.encode_images`), the encoder once over every expression
(`EVFSAM.encode_prompts`). The model never decodes a batch itself and never imports what drives it:
the path from a batch to masks is `evf.decode.decode` (training, evaluation, ``evf predict``),
interactive use is `evf.Predictor`, files and folders are `evf.predict_images`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from evf.encoders import MultimodalEncoder, create_encoder
from evf.lora import LoraConfig, adapter_parameters, add_adapters, matching_linears, merge_adapters
from evf.sam_backends import ImageFeatures, SamBackend, create_backend


@dataclass
class TrainableParts:
    """Which parts train (paper Table 4). The SAM image encoder is frozen in the paper."""

    encoder: bool = True
    projector: bool = True
    prompt_encoder: bool = True
    mask_decoder: bool = True
    image_encoder: bool = False
    presence_head: bool = True  # only where the model has one (``presence=True``)

    @classmethod
    def for_lora(cls, lora: LoraConfig) -> TrainableParts:
        """LoRA's default: the adapters (a part with adapters trains them only), the projector and
        the presence head train; SAM stays frozen."""
        return cls(
            encoder=bool(lora.encoder_targets),
            projector=True,
            prompt_encoder=False,
            mask_decoder=bool(lora.decoder_targets),
            image_encoder=False,
        )


@dataclass
class EncodedPrompts:
    """What the text side gives the decoder for ``N`` expressions.

    Attributes:
        tokens: ``[N,1,prompt_dim]`` sparse prompt tokens.
        presence_logits: ``[N]`` logits that each expression's target is in its image; None for a
            model without a presence head.
    """

    tokens: torch.Tensor
    presence_logits: torch.Tensor | None


class EVFSAM(nn.Module):
    """Encoder + projector (Linear-ReLU-Linear to the backend's prompt width) + SAM backend, and
    optionally a presence head (Linear-ReLU-Linear to one logit) on the same multimodal feature:
    whether the expression's target is in the image at all (generalized referring segmentation).

    Frozen parts have ``requires_grad=False`` and stay in eval mode even under ``.train()``, so their
    normalisation statistics and dropout never change. A part with LoRA adapters (`add_lora`) trains
    its adapters only: its own weights stay frozen, and it is in train mode with the model.
    """

    def __init__(
        self,
        encoder: MultimodalEncoder,
        backend: SamBackend,
        trainable: TrainableParts | None = None,
        presence: bool = False,
    ):
        super().__init__()
        self.encoder = encoder
        self.backend = backend
        dim = encoder.feature_dim
        self.projector = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, backend.prompt_dim))
        self.presence_head = (
            nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1)) if presence else None
        )
        self.lora: LoraConfig | None = None
        self.set_trainable(trainable or TrainableParts())

    @property
    def has_presence(self) -> bool:
        return self.presence_head is not None

    def add_lora(self, config: LoraConfig) -> None:
        """Add LoRA adapters (`evf.lora`) to the encoder's and the mask decoder's target layers.

        Load the base weights first: the adapted layers' weights move to ``*.base_layer.*``.

        Raises:
            ValueError: the model has adapters already, a target matches no layer, or a part with
                targets is frozen (``trainable``).
        """
        if self.lora is not None:
            raise ValueError("the model has LoRA adapters already")
        targeted = [
            (part, module, targets)
            for part, module, targets in (
                ("encoder", self.encoder, config.encoder_targets),
                ("mask_decoder", self.backend.mask_decoder, config.decoder_targets),
            )
            if targets
        ]
        for part, module, targets in targeted:  # every check before the first adapter goes in
            if not getattr(self.trainable, part):
                raise ValueError(f"LoRA targets in the {part}, but trainable.{part} is false")
            matching_linears(module, targets, part)
        for part, module, targets in targeted:
            add_adapters(module, config, targets, part)
        self.lora = config
        self.set_trainable(self.trainable)

    def merge_lora(self) -> int:
        """Fold the adapters into the base weights and unwrap the layers: afterwards the model is a
        plain one (its state dict has no adapter keys; the trainable flags mean whole parts again).
        Returns the number of adapted layers merged (0 without adapters)."""
        merged = sum(merge_adapters(module) for module in self.parts().values())
        self.lora = None
        self.set_trainable(self.trainable)
        return merged

    def parts(self) -> dict[str, nn.Module]:
        """The parts that the trainable flags refer to (``presence_head`` only where there is one)."""
        parts = {
            "encoder": self.encoder,
            "projector": self.projector,
            "image_encoder": self.backend.image_encoder,
            "prompt_encoder": self.backend.prompt_encoder,
            "mask_decoder": self.backend.mask_decoder,
        }
        if self.presence_head is not None:
            parts["presence_head"] = self.presence_head
        return parts

    def set_trainable(self, trainable: TrainableParts) -> None:
        """Set ``requires_grad`` per part; a part with adapters trains its adapters only.

        Raises:
            ValueError: a part with adapters is set frozen.
        """
        for name, module in self.parts().items():
            train, adapters = getattr(trainable, name), adapter_parameters(module)
            if adapters and not train:
                raise ValueError(f"the {name} has LoRA adapters, so trainable.{name} must be true")
            module.requires_grad_(train and not adapters)
            for p in adapters:
                p.requires_grad_(True)
        self.trainable = trainable
        self.train(self.training)

    def train(self, mode: bool = True) -> EVFSAM:
        super().train(mode)
        for name, module in self.parts().items():
            if not getattr(self.trainable, name):
                module.eval()
        return self

    def encode_images(self, sam_pixels: torch.Tensor) -> ImageFeatures:
        """``[B,3,S,S]`` -> backend image features; no autograd graph unless the image encoder trains.

        A frozen encoder runs under ``no_grad``, so none of its activations are kept. Not under
        ``inference_mode``: SAM 2's decoder convolves the features with trainable weights, and
        autograd refuses to save inference tensors for backward (a copy of the feature maps would
        be needed). Both modes encode equally fast (benchmarks/README.md).
        """
        with torch.set_grad_enabled(self.trainable.image_encoder and torch.is_grad_enabled()):
            return self.backend.encode_image(sam_pixels)

    def encode_prompts(
        self,
        encoder_pixels: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_index: torch.Tensor,
    ) -> EncodedPrompts:
        """Expressions -> sparse prompt tokens and (with a presence head) presence logits, from one
        pass of the multimodal encoder."""
        features = self.encoder(encoder_pixels, input_ids, attention_mask, image_index)
        presence = None if self.presence_head is None else self.presence_head(features)[:, 0]
        return EncodedPrompts(self.projector(features).unsqueeze(1), presence)

    def prompt_tokens(
        self,
        encoder_pixels: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_index: torch.Tensor,
    ) -> torch.Tensor:
        """Expressions -> ``[N,1,prompt_dim]`` sparse prompt tokens."""
        return self.encode_prompts(encoder_pixels, input_ids, attention_mask, image_index).tokens


def create_model(
    encoder: str | MultimodalEncoder = "beit3_large",
    backend: str | SamBackend = "sam_vit_h",
    trainable: TrainableParts | dict[str, Any] | None = None,
    encoder_kwargs: dict[str, Any] | None = None,
    backend_kwargs: dict[str, Any] | None = None,
    presence: bool = False,
    lora: LoraConfig | dict[str, Any] | None = None,
) -> EVFSAM:
    """Compose an `EVFSAM` from registry names or ready-built parts (``presence`` adds the presence
    head; ``lora`` adds adapters after the parts' checkpoints are loaded, and without ``trainable``
    trains what `TrainableParts.for_lora` says).

    Example:
        >>> model = create_model("beit3_tiny", "sam_tiny")
        >>> model.projector[-1].out_features
        64
    """
    if isinstance(encoder, str):
        encoder = create_encoder(encoder, **(encoder_kwargs or {}))
    elif encoder_kwargs:
        raise ValueError("encoder_kwargs only apply when the encoder is given by name")
    if isinstance(backend, str):
        backend = create_backend(backend, **(backend_kwargs or {}))
    elif backend_kwargs:
        raise ValueError("backend_kwargs only apply when the backend is given by name")
    if isinstance(trainable, dict):
        trainable = TrainableParts(**trainable)
    if isinstance(lora, dict):
        lora = LoraConfig(**lora)
    if trainable is None and lora is not None:
        trainable = TrainableParts.for_lora(lora)
    model = EVFSAM(encoder, backend, trainable, presence=presence)
    if lora is not None:
        model.add_lora(lora)
    return model


def trainable_summary(model: EVFSAM) -> dict[str, dict[str, int]]:
    """Parameter counts per part, split into trainable and frozen (works on the meta device)."""
    out = {}
    for name, module in model.parts().items():
        params = list(module.parameters())
        out[name] = {
            "trainable": sum(p.numel() for p in params if p.requires_grad),
            "frozen": sum(p.numel() for p in params if not p.requires_grad),
        }
    return out


__all__ = [
    "EVFSAM",
    "EncodedPrompts",
    "TrainableParts",
    "create_model",
    "trainable_summary",
]
