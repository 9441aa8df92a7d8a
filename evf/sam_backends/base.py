"""The interface every SAM backend implements, and the metadata it registers with.

A backend owns its preprocessing, its (usually frozen) image encoder, its prompt encoder and mask
decoder, and its postprocessing. The text enters as extra sparse prompt tokens; nothing outside
`evf.sam_backends` knows which backend is in use. A family that EVF-SAM released checkpoints of
declares how they are laid out (`ReleaseLayout`, in its `BackendInfo`).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from evf.checkpoint import CheckpointError, CheckpointFormat, Rule, StateDict, load_strict, read_state_dict
from evf.preprocessing import ImageSpec
from evf.registry import Registry

# Image features as a dict of tensors whose dim 0 is the image: SAM has one level, SAM-2 three.
ImageFeatures = dict[str, torch.Tensor]

# EVF-SAM's inference.py (and demo.py) resize SAM-2 and EfficientSAM inputs as a uint8 tensor with
# F.interpolate (bilinear, no antialiasing) straight to S x S; its training/eval pipelines, which our
# backends follow, differ (PIL; EfficientSAM: longest side first). See docs/pretrained.md.
UINT8_SQUARE_RESIZE: dict[str, Any] = {
    "resize": "square",
    "resampler": "torch_uint8",
    "interpolation": "bilinear",
}


@dataclass(frozen=True, eq=False)
class ReleaseLayout:
    """How one backend family appears under ``visual_model.`` in EVF-SAM's released checkpoints
    (`evf.pretrained`, ``evf export``). One object per family, compared by identity (so that
    `BackendInfo` stays hashable).

    Attributes:
        architecture: ``architectures[0]`` of a release's config.json.
        scales: ``sam_scale`` -> registered backend name (the scales the official code builds).
        format: the family's own official checkpoint format: the release holds its keys.
        export_rules: the inverse of ``format`` for what we build (keys of the backend's inner
            module, `SamBackend.core`, -> official keys).
        marker: an official key that only this family holds (confirms the config from the weights).
        inference_image: `ImageSpec` fields of EVF-SAM's ``inference.py`` where they differ from the
            backend's registered (training) preprocessing.
    """

    architecture: str
    scales: dict[str, str]
    format: CheckpointFormat
    export_rules: tuple[Rule, ...]
    marker: str
    inference_image: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendInfo:
    """What the data side needs without building weights.

    Attributes:
        family: ``sam``, ``sam2`` or ``efficient_sam``.
        image: preprocessing of the image encoder's input.
        prompt_dim: width of one sparse prompt token (the projector's output width).
        release: the family's layout in released EVF-SAM checkpoints; None: it has none.
    """

    family: str
    image: ImageSpec
    prompt_dim: int
    release: ReleaseLayout | None = None


@dataclass
class PointPrompts:
    """Optional point prompts, one row per expression, in the backend's input frame (after resize).

    ``coords`` is ``[N,K,2]`` (x, y); ``labels`` is ``[N,K]`` with 1 = foreground, 0 = background,
    -1 = padding (an absent point).
    """

    coords: torch.Tensor
    labels: torch.Tensor


@dataclass
class DecoderOutput:
    logits: torch.Tensor  # [N,1,h,w] low-resolution mask logits
    iou: torch.Tensor  # [N,1] predicted IoU of the returned mask


def state_hash(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors: names (sorted), shapes and values, floats as float32.

    Floats are hashed as float32 so the same weights hash alike whether read from a file or from a
    built module (a checkpoint stored in fp16 loads into fp32 parameters).
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        if tensor.is_floating_point():
            tensor = tensor.float()
        tensor = tensor.cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{str(tensor.dtype)}|{list(state[name].shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class AbsentImageEncoder(nn.Module):
    """Stands in for an image encoder that was not built (``image_encoder=False``: features come from
    an embedding cache). It has no parameters; calling it raises.

    Attributes:
        weights_hash: `state_hash` of the image-encoder tensors of the checkpoint the backend was
            loaded from (`take_weights`); None without one: the weights are then unknown.
    """

    def __init__(self) -> None:
        super().__init__()
        self.weights_hash: str | None = None

    def forward(self, pixels: torch.Tensor) -> ImageFeatures:
        raise RuntimeError(
            "this SAM backend was built without its image encoder (image_encoder=False, embedding-cache "
            "mode): pass precomputed image_features, or build it with image_encoder=True"
        )

    def take_weights(self, state: Mapping[str, torch.Tensor], prefix: str, source: str) -> StateDict:
        """Hash a checkpoint's image-encoder tensors (keys ``prefix*``) into ``weights_hash``, which the
        embedding cache checks its features against, instead of loading them.

        Returns:
            The other tensors of ``state``, to load as usual.

        Raises:
            CheckpointError: ``state`` holds no key under ``prefix`` (``source`` names the file).
        """
        encoder_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not encoder_state:
            raise CheckpointError(f"{source}: no image encoder tensors ({prefix}*)")
        self.weights_hash = state_hash(encoder_state)
        return {k: v for k, v in state.items() if not k.startswith(prefix)}


def load_backend_checkpoint(module: nn.Module, path: str | Path, fmt: CheckpointFormat) -> None:
    """`load_checkpoint` for a backend's inner module, whose image encoder is ``module.image_encoder``;
    an `AbsentImageEncoder` there takes the hash of the checkpoint's ``image_encoder.*`` tensors."""
    state = fmt.remap(read_state_dict(path, fmt.containers), source=str(path))
    encoder = getattr(module, "image_encoder", None)
    if isinstance(encoder, AbsentImageEncoder):
        state = encoder.take_weights(state, "image_encoder.", source=f"{path} (format {fmt.name!r})")
    load_strict(module, state, fmt, source=str(path))


class SamBackend(nn.Module, ABC):
    """Image encoder + prompt encoder + mask decoder of one SAM family.

    The three parts are attributes of one inner module, the attribute named by ``core`` (``sam``,
    ``sam2``): official checkpoints load into it, and its name is the ``backend.<core>.`` prefix of
    our saved checkpoints. A backend built with ``image_encoder=False`` (every registered factory
    takes it) holds an `AbsentImageEncoder`: it decodes precomputed features only, e.g. from an
    embedding cache.
    """

    info: BackendInfo
    core: ClassVar[str]

    @property
    def core_module(self) -> nn.Module:
        """``self.<core>``, which holds ``image_encoder``, ``prompt_encoder`` and ``mask_decoder``."""
        return getattr(self, self.core)

    @property
    def image_encoder(self) -> nn.Module:
        return self.core_module.image_encoder

    @property
    def prompt_encoder(self) -> nn.Module:
        return self.core_module.prompt_encoder

    @property
    def mask_decoder(self) -> nn.Module:
        return self.core_module.mask_decoder

    @property
    def prompt_dim(self) -> int:
        return self.info.prompt_dim

    @property
    def has_image_encoder(self) -> bool:
        """False when built with ``image_encoder=False``."""
        return not isinstance(self.image_encoder, AbsentImageEncoder)

    def image_encoder_hash(self) -> str:
        """`state_hash` of everything ``encode_image`` reads: the image-encoder part's state dict
        (each family keeps all of it there, e.g. SAM 2's ``no_mem_embed``).

        Raises:
            ValueError: built without an image encoder and without a checkpoint (unknown weights).
        """
        encoder = self.image_encoder
        if isinstance(encoder, AbsentImageEncoder):
            if encoder.weights_hash is None:
                raise ValueError(
                    "the image encoder was not built and no backend checkpoint was given, so its weights "
                    "are unknown: set the backend checkpoint (random-init weights cannot be cached)"
                )
            return encoder.weights_hash
        return state_hash(encoder.state_dict())

    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of one image's features per key of ``encode_image``'s output (without the image dim).

        By default one level, ``image_embeddings`` ``(prompt_dim, *prompt_encoder.image_embedding_size)``.
        """
        return {"image_embeddings": (self.prompt_dim, *self.prompt_encoder.image_embedding_size)}

    def encode_image(self, pixels: torch.Tensor) -> ImageFeatures:
        """``[B,3,S,S]`` backend-normalised pixels -> features, one row per image: the image encoder's
        output, a tensor ``[B,C,h,w]`` becoming ``{"image_embeddings": ...}`` and a dict kept as is."""
        features = self.image_encoder(pixels)
        return features if isinstance(features, dict) else {"image_embeddings": features}

    @abstractmethod
    def decode(
        self,
        features: ImageFeatures,
        image_index: torch.Tensor,
        text_tokens: torch.Tensor | None,
        points: PointPrompts | None = None,
        boxes: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """Decode one mask per expression.

        Args:
            features: output of ``encode_image`` for B images.
            image_index: ``[N]``, the image of each expression.
            text_tokens: ``[N,T,prompt_dim]`` extra sparse prompt tokens (the projected text), or None.
            points: optional point prompts (input frame).
            boxes: optional ``[N,4]`` boxes (x0, y0, x1, y1) in the input frame.
        """

    @abstractmethod
    def decode_sparse(
        self, features: ImageFeatures, image_index: torch.Tensor, sparse: torch.Tensor
    ) -> DecoderOutput:
        """`decode` from the finished sparse prompt ``[N,T,prompt_dim]`` (geometry tokens, then the
        text): the mask decoder alone, with the family's "no mask" dense prompt (`evf.deploy`'s
        decoder graph)."""

    @abstractmethod
    def embed_geometry(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Point and box prompts as sparse tokens ``[N,K,prompt_dim]``, from ``[N,K,2]`` input-frame
        coordinates and ``[N,K]`` labels in one convention for every family (SAM's ONNX one): 1
        foreground, 0 background, -1 padding, 2 / 3 a box's top-left / bottom-right corner. The
        family's own order and padding (`evf.deploy.geometry`) make ``coords`` / ``labels``; with
        them, ``decode_sparse(f, i, cat([embed_geometry(c, l), text]))`` equals `decode` (`evf.deploy`'s
        geometry graph)."""

    @abstractmethod
    def postprocess(
        self, low_res_logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """``[n,1,h,w]`` low-res logits of one image -> ``[n,H,W]`` logits at the original size."""


BackendT = TypeVar("BackendT", bound=SamBackend)


def create_variant(
    name: str,
    variant: Mapping[str, Any],
    build: Callable[..., BackendT],
    checkpoint: str | Path | None,
    overrides: Mapping[str, Any],
    fixed: Iterable[str],
    extra: Iterable[str] = (),
) -> BackendT:
    """``build(**variant, **overrides, checkpoint=checkpoint)``: what a registered factory does.

    Args:
        name: the registered name (for the error).
        variant: the variant's row of its family's size table.
        build: the family's builder.
        checkpoint: the official checkpoint to load, or None.
        overrides: the factory's keyword options. Allowed: the row's fields, ``image_encoder`` and
            ``extra``, except ``fixed``, which the data side reads from the registry metadata.
        fixed: fields fixed per registered name.
        extra: further builder options.

    Raises:
        TypeError: an unknown or fixed option.
    """
    allowed = (set(variant) | {"image_encoder", *extra}) - set(fixed)
    unknown = set(overrides) - allowed
    if unknown:
        raise TypeError(f"{name}: unknown or fixed option(s) {sorted(unknown)}; valid: {sorted(allowed)}")
    return build(**{**variant, **overrides}, checkpoint=checkpoint)


BACKENDS: Registry[SamBackend, BackendInfo] = Registry("SAM backend", "evf.sam_backends")
