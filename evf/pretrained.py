"""Released EVF-SAM checkpoints (Hugging Face layout) -> `EVFSAM`: ``evf.load_pretrained(DIR)``.

A release directory (``evf-sam`` / ``evf-sam-multitask``: SAM-H + BEIT-3-L; ``evf-sam2`` /
``evf-sam2-multitask``: SAM-2-L + BEIT-3-L; ``evf-effi-sam`` / ``-multitask``: EfficientSAM +
BEIT-3-L) holds:

* ``config.json``: ``architectures`` (``EvfSamModel`` / ``EvfSam2Model`` / ``EvfEffiSamModel``),
  ``sam_scale``, ``mm_extractor_scale``, ``hidden_size``, ``out_dim``. Our export adds
  ``evf_encoder`` / ``evf_backend`` (registry names, which also name the tiny test models) and
  ``evf_encoder_kwargs`` / ``evf_backend_kwargs``; when present they take precedence over the scales.
* weights: ``model.safetensors`` or ``pytorch_model.bin``, or shards of either listed in
  ``<name>.index.json``. Keys: ``visual_model.*`` (the official SAM / SAM2Base / EfficientSam
  module), ``mm_extractor.beit3.*`` (torchscale's ``BEiT3``), ``text_hidden_fcs.0.{0,2}.*`` (the
  projector).
* the XLM-R tokenizer: ``sentencepiece.bpe.model`` and/or ``tokenizer.json``.

Loading goes through one `CheckpointFormat` per backend family (``evf_release_<family>``), composed
with prefixes (`release_format`) from what each family declares: the encoder's release rules
(`MultimodalEncoder.release_rules`) and the backend family's `ReleaseLayout` (`BackendInfo.release`).
It is strict. Torch files are read with ``weights_only=True``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from evf.checkpoint import (
    CheckpointError,
    CheckpointFormat,
    Rule,
    StateDict,
    load_strict,
    prefix_rules,
    read_state_dict,
)
from evf.encoders import ENCODERS
from evf.model import EVFSAM, create_model
from evf.sam_backends import BACKENDS, ReleaseLayout, SamBackend
from evf.sam_backends.base import AbsentImageEncoder

CONFIG_NAME = "config.json"
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")  # in order of preference, each maybe sharded
ENCODER_PREFIX = "mm_extractor.beit3."
BACKEND_PREFIX = "visual_model."
PROJECTOR_RULES = (Rule(r"text_hidden_fcs\.0\.(0|2)\.(weight|bias)", r"projector.\1.\2"),)
# Our extension of the layout (official releases have none; the official code ignores the keys).
PRESENCE_RULES = (Rule(r"evf_presence_head\.(0|2)\.(weight|bias)", r"presence_head.\1.\2"),)


def release_layouts() -> dict[str, ReleaseLayout]:
    """Backend family -> its `ReleaseLayout`, for every registered family that declares one."""
    infos = (BACKENDS.info(name) for name in BACKENDS.names())
    return {info.family: info.release for info in infos if info.release is not None}


Preprocessing = Literal["inference", "training"]
PREPROCESSINGS: tuple[Preprocessing, ...] = ("inference", "training")
PREPROCESSING_KEY = "evf_preprocessing"
"""config.json field (ours) naming the preprocessing an exported model ran with."""


def encoder_scales() -> dict[str, str]:
    """``mm_extractor_scale`` -> registered encoder name, from every encoder family with a release form."""
    releases = (ENCODERS.info(name).release for name in ENCODERS.names())
    return {scale: name for r in releases if r is not None for scale, name in r.scales.items()}


@dataclass(frozen=True)
class ReleaseConfig:
    """What config.json says, resolved to registry names.

    Attributes:
        family: the backend family (a key of `release_layouts`).
        encoder, backend: registered names.
        encoder_kwargs, backend_kwargs: factory options (``evf_*_kwargs``; empty for official releases).
        hidden_size, out_dim: projector widths the weights must have.
        presence: the release has a presence head (``evf_presence``; false for official releases).
        preprocessing: the image preprocessing the exported model ran with (``evf_preprocessing``:
            ``training`` for a run of ours, which `load_pretrained` then follows); None for
            official releases (EVF-SAM's ``inference.py`` preprocessing).
    """

    family: str
    encoder: str
    backend: str
    encoder_kwargs: dict[str, Any]
    backend_kwargs: dict[str, Any]
    hidden_size: int | None
    out_dim: int | None
    presence: bool = False
    preprocessing: Preprocessing | None = None

    @classmethod
    def read(cls, directory: str | Path) -> ReleaseConfig:
        """Parse ``<directory>/config.json``; an unknown architecture or scale, or ``evf_*`` names
        that contradict ``architectures``, raise a `CheckpointError` naming the field."""
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: an EVF-SAM release directory holds config.json and weights"
            )
        cfg = json.loads(path.read_text())
        arch = (cfg.get("architectures") or [None])[0]
        layouts = release_layouts()
        by_architecture = {layout.architecture: family for family, layout in layouts.items()}
        if arch not in by_architecture:
            raise CheckpointError(
                f"{path}: architectures={cfg.get('architectures')!r}; known: {sorted(by_architecture)}"
            )
        family = by_architecture[arch]
        backend = _resolve(path, cfg, "evf_backend", "sam_scale", layouts[family].scales)
        if BACKENDS.info(backend).family != family:
            raise CheckpointError(
                f"{path}: evf_backend {backend!r} is a {BACKENDS.info(backend).family} backend, "
                f"but architectures names {arch} ({family})"
            )
        encoder = _resolve(path, cfg, "evf_encoder", "mm_extractor_scale", encoder_scales())
        if ENCODERS.info(encoder).release is None:
            raise CheckpointError(f"{path}: evf_encoder {encoder!r} is not a BEIT-3 encoder")
        preprocessing = cfg.get(PREPROCESSING_KEY)
        if preprocessing not in (None, *PREPROCESSINGS):
            raise CheckpointError(
                f"{path}: {PREPROCESSING_KEY}={preprocessing!r}; known: {list(PREPROCESSINGS)}"
            )
        return cls(
            family, encoder, backend, dict(cfg.get("evf_encoder_kwargs") or {}),
            dict(cfg.get("evf_backend_kwargs") or {}), cfg.get("hidden_size"), cfg.get("out_dim"),
            bool(cfg.get("evf_presence", False)), preprocessing,
        )  # fmt: skip

    def check_names(self, encoder: str, backend: str, source: str | Path) -> None:
        """Raise unless the release describes encoder ``encoder`` and backend ``backend``."""
        if (encoder, backend) != (self.encoder, self.backend):
            raise CheckpointError(
                f"{source}: the release holds encoder {self.encoder!r} + backend {self.backend!r}, "
                f"but the model is configured as {encoder!r} + {backend!r}"
            )


def _resolve(path: Path, cfg: dict, name_key: str, scale_key: str, scales: dict[str, str]) -> str:
    """An explicit registry name, else the official scale through ``scales``; both must agree."""
    name, scale = cfg.get(name_key), cfg.get(scale_key)
    if scale is not None and scale not in scales and name is None:
        raise CheckpointError(f"{path}: {scale_key}={scale!r} is not one of {sorted(scales)}")
    if name is not None and scale in scales and scales[scale] != name:
        raise CheckpointError(
            f"{path}: {name_key}={name!r} contradicts {scale_key}={scale!r} ({scales[scale]})"
        )
    if name is None and scale is None:
        raise CheckpointError(f"{path}: needs {scale_key!r} (one of {sorted(scales)}) or {name_key!r}")
    return name if name is not None else scales[scale]


def release_layout(backend: SamBackend) -> ReleaseLayout:
    """The `ReleaseLayout` of ``backend``'s family; other families have no released layout."""
    if backend.info.release is None:
        raise CheckpointError(
            f"backend family {backend.info.family!r} has no EVF-SAM release layout; "
            f"known: {sorted(release_layouts())}"
        )
    return backend.info.release


def release_format(model: EVFSAM, presence_from_init: bool = False) -> CheckpointFormat:
    """``evf_release_<family>``: the encoder's release rules under ``mm_extractor.beit3.`` (dropping
    what it does not build) into ``encoder.``, the backend family's official rules under
    ``visual_model.`` into ``backend.<core>.``, the projector rule and our presence-head rule
    (``presence_from_init``: the model's presence head may be absent from the weights)."""
    encoder_rules = model.encoder.release_rules(ENCODER_PREFIX)
    layout = release_layout(model.backend)
    target = f"backend.{model.backend.core}."
    rules = (
        *prefix_rules(encoder_rules, target="encoder."),
        *prefix_rules(layout.format.rules, source=BACKEND_PREFIX, target=target),
        *PROJECTOR_RULES,
        *PRESENCE_RULES,
    )
    allow = tuple(target + glob for glob in layout.format.allow_missing)
    allow += ("presence_head.*",) if presence_from_init else ()
    name = f"evf_release_{model.backend.info.family}"
    return CheckpointFormat(name=name, rules=rules, containers=(), allow_missing=allow)


def read_release_state(directory: str | Path) -> StateDict:
    """All tensors of a release directory: ``model.safetensors`` before ``pytorch_model.bin``, each
    either whole or as the shards listed in ``<name>.index.json`` (every listed shard must exist
    and hold exactly its listed keys)."""
    directory = Path(directory)
    for name in WEIGHT_NAMES:
        index = directory / f"{name}.index.json"
        if index.is_file():
            return _read_shards(directory, index)
        if (directory / name).is_file():
            return read_state_dict(directory / name, containers=())
    raise FileNotFoundError(
        f"{directory}: no weights; expected one of " + ", ".join(f"{n}, {n}.index.json" for n in WEIGHT_NAMES)
    )


def _read_shards(directory: Path, index: Path) -> StateDict:
    weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
    state: StateDict = {}
    for shard in sorted(set(weight_map.values())):
        part = read_state_dict(directory / shard, containers=())
        listed = {k for k, v in weight_map.items() if v == shard}
        if set(part) != listed:
            extra, absent = sorted(set(part) - listed), sorted(listed - set(part))
            raise CheckpointError(
                f"{directory / shard}: does not match {index.name} (extra {extra[:3]}, absent {absent[:3]})"
            )
        state.update(part)
    return state


def load_release_weights(model: EVFSAM, directory: str | Path, config: ReleaseConfig | None = None) -> None:
    """Load a release directory's weights into ``model`` strictly (`release_format`).

    Args:
        model: an `EVFSAM` with a BEIT-3 encoder and a backend of a released family.
        directory: the release directory.
        config: its parsed config.json, to check the projector widths against.

    Raises:
        CheckpointError: the weights belong to another backend family than the model's, the
            projector widths differ from the config's, or keys are missing / unexpected / of the
            wrong shape (named).
    """
    directory = Path(directory)
    release_presence = config is not None and config.presence
    if release_presence and not model.has_presence:
        raise CheckpointError(
            f"{directory}: the release has a presence head (evf_presence: true) but the model has none; "
            "build it with presence=True (model.presence: true)"
        )
    fmt = release_format(model, presence_from_init=model.has_presence and not release_presence)
    if config is not None:
        _check_widths(directory, model, config)
    state = read_release_state(directory)
    _check_family(directory, model.backend, state)
    mapped = fmt.remap(state, source=str(directory))
    image_encoder = model.backend.image_encoder
    if isinstance(image_encoder, AbsentImageEncoder):  # embedding-cache mode: hashed, not loaded
        prefix = f"backend.{model.backend.core}.image_encoder."
        mapped = image_encoder.take_weights(mapped, prefix, source=str(directory))
    load_strict(model, mapped, fmt, source=str(directory))


def _check_family(directory: Path, backend: SamBackend, state: StateDict) -> None:
    """Raise unless the weights hold the marker key of ``backend``'s family, naming the family they
    look like instead."""
    layout = release_layout(backend)
    if BACKEND_PREFIX + layout.marker in state:
        return
    markers = {family: BACKEND_PREFIX + other.marker for family, other in release_layouts().items()}
    found = [family for family, marker in markers.items() if marker in state]
    raise CheckpointError(
        f"{directory}: config/model say {layout.architecture} ({backend.info.family}), "
        f"but the weights lack {BACKEND_PREFIX + layout.marker}"
        + (f" and look like {found[0]} (they hold {markers[found[0]]})" if found else "")
    )


def _check_widths(directory: Path, model: EVFSAM, config: ReleaseConfig) -> None:
    widths = {"hidden_size": model.encoder.feature_dim, "out_dim": model.backend.prompt_dim}
    for key, ours in widths.items():
        theirs = getattr(config, key)
        if theirs is not None and theirs != ours:
            raise CheckpointError(
                f"{directory / CONFIG_NAME}: {key}={theirs}, but the model built from it has {ours}"
            )


def use_inference_preprocessing(model: EVFSAM) -> None:
    """Give ``model`` (its backend instance) the image preprocessing of EVF-SAM's ``inference.py``."""
    layout = release_layout(model.backend)
    if layout.inference_image:
        info = model.backend.info
        model.backend.info = replace(info, image=replace(info.image, **layout.inference_image))


def image_preprocessing(model: EVFSAM) -> Preprocessing:
    """Which of the family's two preprocessings ``model``'s backend runs (``training`` where they are
    the same, as for SAM): what `evf export` records, so the export predicts as the run did."""
    inference = release_layout(model.backend).inference_image
    image = model.backend.info.image
    if inference and all(getattr(image, key) == value for key, value in inference.items()):
        return "inference"
    return "training"


def load_pretrained(
    path: str | Path,
    preprocessing: Preprocessing | None = None,
    device: str | torch.device | None = None,
) -> EVFSAM:
    """Build the `EVFSAM` a release directory describes and load its weights strictly.

    Example:
        >>> model = evf.load_pretrained("checkpoints/evf-sam2")  # doctest: +SKIP
        >>> predictor = evf.Predictor(model, dtype=torch.bfloat16)  # doctest: +SKIP
        >>> predictor.set_image(image)  # doctest: +SKIP
        >>> predictor.predict(["zebra top left"]).masks  # doctest: +SKIP

    Args:
        path: the release directory (config.json, weights, tokenizer files).
        preprocessing: ``inference`` resizes images exactly as EVF-SAM's ``inference.py`` / demo
            (for SAM-2 and EfficientSAM a uint8 torch resize to the square input); ``training``
            keeps the backend's registered preprocessing (EVF-SAM's training/eval data pipeline,
            which our runs train with). None: what the release records (``evf_preprocessing``,
            written by `evf export`: a run's export predicts as ``evf predict`` on the run does),
            else ``inference`` (the official releases).
        device: where to put the model (weights stay float32; for bf16 / fp16 inference pass
            ``dtype=`` to `evf.Predictor` or `evf.predict_images`, which run under autocast).

    Returns:
        The model in eval mode.
    """
    if preprocessing not in (None, *PREPROCESSINGS):
        raise ValueError(f"preprocessing must be 'inference', 'training' or None, not {preprocessing!r}")
    config = ReleaseConfig.read(path)
    preprocessing = preprocessing or config.preprocessing or "inference"
    model = create_model(
        config.encoder,
        config.backend,
        encoder_kwargs={**config.encoder_kwargs, "tokenizer": Path(path)},
        backend_kwargs=config.backend_kwargs,
        presence=config.presence,
    )
    load_release_weights(model, path, config)
    if preprocessing == "inference":
        use_inference_preprocessing(model)
    return model.to(device=device).eval()


__all__ = [
    "PREPROCESSING_KEY",
    "ReleaseConfig",
    "image_preprocessing",
    "encoder_scales",
    "load_pretrained",
    "load_release_weights",
    "read_release_state",
    "release_format",
    "release_layout",
    "release_layouts",
]
