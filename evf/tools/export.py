"""``evf export``: one of our trained models -> the released EVF-SAM layout (`evf.pretrained`).

    evf export --ckpt_path runs/x/checkpoints/last.ckpt --output exported/evf-sam-x

writes ``config.json``, ``model.safetensors`` and the tokenizer files, so EVF-SAM's own
``inference.py`` / ``demo.py`` (``EvfSamModel.from_pretrained(DIR)``) and `evf.load_pretrained` read it.

Tensors the official model has and ours does not build are written as **zeros** of the official
shape. For BEIT-3 these are the text side of the last layer (query, output, FFN and their norms),
the text copy of the final LayerNorm, and ``vision_embed.mask_token``: with EVF's feature (the
image [CLS] after the last layer) nothing reads them: they only feed the text tokens of the last
layer, which the official code discards (``encoder_out[:, :1]``), and masked-patch prediction,
which EVF never runs. Zeros keep the file self-contained and make the placeholders obvious; copying
values from a BEIT-3 checkpoint instead would change no output while mixing another run's tensors
into the file (tests/test_export.py shows the official architecture gives identical features
whatever values those tensors hold). SAM-2's video-memory modules are not written: our SAM-2
backend has none, image inference never runs them, and ``from_pretrained`` initialises them with a
warning.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from evf.checkpoint import CheckpointError, CheckpointFormat, Rule, StateDict
from evf.encoders import create_encoder
from evf.encoders.beit3 import TORCHSCALE_ONLY, BEiT3Encoder, beit3_export_rules, plan_fusion
from evf.encoders.beit3.tokenizer import FAST_NAME, SPM_NAME
from evf.model import EVFSAM
from evf.pretrained import CONFIG_NAME, ENCODER_PREFIX, ENCODER_SCALES, release_family

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
_PROJECTOR = CheckpointFormat(
    "evf_release_export_projector", (Rule(r"(0|2)\.(weight|bias)", r"text_hidden_fcs.0.\1.\2"),)
)
_TOKENIZER_FILES = (SPM_NAME, FAST_NAME, "tokenizer_config.json", "special_tokens_map.json")
# What transformers' XLMRobertaTokenizer (EVF-SAM loads it with use_fast=False) needs beside the
# sentencepiece model when the source was a bare file such as unilm's beit3.spm.
_SPECIAL_TOKENS = {
    "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
    "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
}  # fmt: skip
_NOT_EXPORTED_KWARGS = ("tokenizer", "checkpoint")


def export(
    *,
    ckpt_path: Path,
    output: Path,
    tokenizer: Path | None = None,
    backend_checkpoint: Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a trained EVF-SAM checkpoint in the released EVF-SAM layout.

    Args:
        ckpt_path: our Lightning checkpoint (``EVFSAMModule``; every weight comes from it, except
            the frozen SAM image encoder of a run trained from an embedding cache, which its
            checkpoint does not hold).
        output: the directory to write (config.json, model.safetensors, tokenizer files).
        tokenizer: the BEIT-3 tokenizer file or directory to copy (default: the one the run used).
        backend_checkpoint: for a run trained from an embedding cache (its checkpoint holds no SAM
            image encoder), the SAM weights the cache was built from (their hash is checked).
        overwrite: replace an existing export in ``output``.

    Returns:
        The output directory.
    """
    from evf.cache.keys import CacheMismatchError  # deferred: Lightning is only needed here
    from evf.module import EVFSAMModule

    # Every weight comes from the checkpoint: the run's part checkpoints and release are not read.
    overrides: dict[str, Any] = {
        "encoder_checkpoint": None,
        "backend_checkpoint": backend_checkpoint,
        "init_from": None,
        "use_embedding_cache": False,
    }
    if tokenizer is not None:
        overrides["tokenizer"] = tokenizer
    try:
        module = EVFSAMModule.load_from_checkpoint(ckpt_path, map_location="cpu", **overrides)
    except CacheMismatchError as err:
        raise CacheMismatchError(
            f"{ckpt_path} was trained from an embedding cache and holds no SAM image encoder: pass "
            f"--backend_checkpoint with the SAM weights the cache was built from. ({err})"
        ) from err
    hp = module.hparams
    return export_release(
        module.model,
        output,
        hp.encoder,
        hp.backend,
        hp.encoder_kwargs,
        hp.backend_kwargs,
        overwrite=overwrite,
    )


def export_release(
    model: EVFSAM,
    output: str | Path,
    encoder: str,
    backend: str,
    encoder_kwargs: dict[str, Any] | None = None,
    backend_kwargs: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (built as ``encoder`` + ``backend`` with those kwargs) in the released layout.

    Raises:
        CheckpointError: the model is not what the released layout describes (a BEIT-3 encoder with
            early fusion in every layer and the image [CLS] feature; a SAM, SAM-2 or EfficientSAM
            backend), or ``output`` already holds an export and ``overwrite`` is False.
    """
    output = Path(output)
    if (output / CONFIG_NAME).exists() and not overwrite:
        raise CheckpointError(f"{output} already holds an export; pass overwrite=True (--overwrite true)")
    encoder_kwargs = {k: v for k, v in (encoder_kwargs or {}).items() if k not in _NOT_EXPORTED_KWARGS}
    backend_kwargs = {k: v for k, v in (backend_kwargs or {}).items() if k not in _NOT_EXPORTED_KWARGS}
    state, zero_filled = release_state_dict(model, encoder, encoder_kwargs)
    output.mkdir(parents=True, exist_ok=True)
    save_file(state, str(output / WEIGHTS_NAME), metadata={"format": "pt"})
    config = release_config(model, encoder, backend, encoder_kwargs, backend_kwargs)
    (output / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    write_tokenizer(model.encoder.preprocessor.tokenizer.source, output)
    log.info("wrote %s (%d tensors, %d zero-filled placeholders)", output, len(state), len(zero_filled))
    return output


def release_state_dict(
    model: EVFSAM, encoder: str, encoder_kwargs: dict[str, Any]
) -> tuple[StateDict, list[str]]:
    """The official-named tensors of ``model``, and the names of the zero-filled placeholders."""
    _check_exportable(model)
    name, family = release_family(model.backend)
    to_torchscale = CheckpointFormat("evf_release_export_beit3", beit3_export_rules(ENCODER_PREFIX))
    state = {
        **to_torchscale.remap(model.encoder.state_dict(), source="encoder"),
        **CheckpointFormat(f"evf_release_export_{name}", family.export_rules).remap(
            getattr(model.backend, family.root).state_dict(), source="backend"
        ),
        **_PROJECTOR.remap(model.projector.state_dict(), source="projector"),
    }
    # Every tensor of torchscale's BEiT3: those of an encoder that builds every part, plus mask_token.
    with torch.device("meta"):
        full = create_encoder(
            encoder, **{**encoder_kwargs, "fusion": "early", "fusion_layers": None, "feature": "concat"}
        )
    shapes = {k: v.shape for k, v in to_torchscale.remap(full.state_dict(), source="full BEIT-3").items()}
    dim = model.encoder.feature_dim
    shapes.update({ENCODER_PREFIX + key: torch.Size((1, 1, dim)) for key in TORCHSCALE_ONLY})
    zero_filled = sorted(k for k in shapes if k not in state)
    dtype = next(model.encoder.parameters()).dtype
    state.update({k: torch.zeros(shapes[k], dtype=dtype) for k in zero_filled})
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}, zero_filled


def _check_exportable(model: EVFSAM) -> None:
    enc = model.encoder
    if not isinstance(enc, BEiT3Encoder) or enc.plan != plan_fusion("early", "cls_image", len(enc.blocks)):
        what = f"{enc.fusion}/{enc.feature}" if isinstance(enc, BEiT3Encoder) else type(enc).__name__
        raise CheckpointError(
            "the released layout describes BEIT-3 with early fusion in every layer and the image [CLS] "
            f"feature (what EVF-SAM's code runs); this model's encoder is {what}"
        )


def release_config(
    model: EVFSAM, encoder: str, backend: str, encoder_kwargs: dict[str, Any], backend_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """config.json: the official fields (scales where the official code builds that size, else
    null) plus our registry names and factory options."""
    _, family = release_family(model.backend)
    return {
        "architectures": [family.architecture],
        "model_type": "evf",
        "sam_scale": next((s for s, n in family.scales.items() if n == backend), None),
        "mm_extractor_scale": next((s for s, n in ENCODER_SCALES.items() if n == encoder), None),
        "hidden_size": model.encoder.feature_dim,
        "out_dim": model.backend.prompt_dim,
        "bos_token_id": 0,
        "pad_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
        "torch_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "evf_encoder": encoder,
        "evf_backend": backend,
        "evf_encoder_kwargs": encoder_kwargs,
        "evf_backend_kwargs": backend_kwargs,
    }


def write_tokenizer(source: Path | None, output: Path) -> None:
    """Copy the XLM-R tokenizer: a sentencepiece file becomes ``sentencepiece.bpe.model``; a
    directory gives its tokenizer files. ``tokenizer_config.json`` / ``special_tokens_map.json``
    are written when the source has none."""
    if source is None or not Path(source).exists():
        raise FileNotFoundError(f"tokenizer source {source} not found; pass --tokenizer")
    source = Path(source)
    if source.is_file():
        shutil.copyfile(source, output / SPM_NAME)
    else:
        for name in _TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, output / name)
    if not (output / "tokenizer_config.json").is_file():
        config = {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512, **_SPECIAL_TOKENS}
        (output / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    if not (output / "special_tokens_map.json").is_file():
        (output / "special_tokens_map.json").write_text(json.dumps(_SPECIAL_TOKENS, indent=2) + "\n")


__all__ = ["export", "export_release", "release_config", "release_state_dict", "write_tokenizer"]
