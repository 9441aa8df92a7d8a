"""``evf export``: one of our trained models -> the released EVF-SAM layout (`evf.pretrained`).

    evf export --ckpt_path runs/x/checkpoints/last.ckpt --output exported/evf-sam-x

writes ``config.json``, ``model.safetensors`` and the tokenizer files, so EVF-SAM's own
``inference.py`` / ``demo.py`` (``EvfSamModel.from_pretrained(DIR)``) and `evf.load_pretrained` read it.

Each family writes its own part: the encoder its tensors under their released names, with **zeros**
of the official shape for the released tensors it does not build, and its tokenizer files
(`MultimodalEncoder.release_state`, ``write_release_tokenizer``; for BEIT-3 see
`evf.encoders.beit3.release`); the backend family the inverse of its official format
(`ReleaseLayout.export_rules`). SAM-2's video-memory modules are not written: our SAM-2 backend has
none, image inference never runs them, and ``from_pretrained`` initialises them with a warning.

A run with LoRA adapters (``model.lora``) is exported merged: each adapter is folded into its base
weight (`EVFSAM.merge_lora`), so the release is a plain EVF-SAM with the same masks.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from safetensors.torch import save_file

from evf.checkpoint import CheckpointError, CheckpointFormat, Rule, StateDict, prefix_rules
from evf.model import EVFSAM
from evf.pretrained import (
    BACKEND_PREFIX,
    CONFIG_NAME,
    ENCODER_PREFIX,
    PREPROCESSING_KEY,
    encoder_scales,
    image_preprocessing,
    release_layout,
)

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
_PROJECTOR = CheckpointFormat(
    "evf_release_export_projector", (Rule(r"(0|2)\.(weight|bias)", r"text_hidden_fcs.0.\1.\2"),)
)
_PRESENCE = CheckpointFormat(
    "evf_release_export_presence", (Rule(r"(0|2)\.(weight|bias)", r"evf_presence_head.\1.\2"),)
)
_NOT_EXPORTED_KWARGS = ("tokenizer", "checkpoint")


def export(
    *,
    output: Path,
    ckpt_path: Path | None = None,
    pretrained: Path | None = None,
    format: Literal["release", "onnx"] = "release",
    tokenizer: Path | None = None,
    backend_checkpoint: Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a trained EVF-SAM model in the released EVF-SAM layout, or as ONNX graphs.

    Args:
        output: the directory to write (release: config.json, model.safetensors, tokenizer files;
            onnx: four graphs, deploy.json and the tokenizer files, `evf.deploy`).
        ckpt_path: our Lightning checkpoint (``EVFSAMModule``; every weight comes from it, except
            the frozen SAM image encoder of a run trained from an embedding cache, which its
            checkpoint does not hold).
        pretrained: instead of ``ckpt_path``, a released or exported directory (`evf.load_pretrained`;
            ``--format onnx`` only).
        format: ``release`` (EVF-SAM's layout) or ``onnx`` (`evf.deploy.export_onnx`, checked in
            onnxruntime before it returns).
        tokenizer: the encoder's tokenizer file or directory to copy (default: the one the run used).
        backend_checkpoint: for a run trained from an embedding cache (its checkpoint holds no SAM
            image encoder), the SAM weights the cache was built from (their hash is checked).
        overwrite: replace an existing export in ``output``.

    Returns:
        The output directory.
    """
    if (ckpt_path is None) == (pretrained is None):
        raise CheckpointError("give either --ckpt_path RUN.ckpt or --pretrained DIR (one of them)")
    if pretrained is not None:
        if format != "onnx":
            raise CheckpointError(
                "--pretrained is already in the released layout: export it with --format onnx"
            )
        from evf.pretrained import ReleaseConfig, load_pretrained

        config = ReleaseConfig.read(pretrained)
        model, encoder, backend, merged = load_pretrained(pretrained), config.encoder, config.backend, 0
    else:
        from evf.module import EVFSAMModule  # deferred: Lightning is only needed here

        module = EVFSAMModule.load_for_inference(ckpt_path, backend_checkpoint, tokenizer)
        merged = module.model.merge_lora()  # neither layout has adapters: fold them in
        model, hp = module.model, module.hparams
        encoder, backend = hp.encoder, hp.backend
    adapters = f", {merged} LoRA-adapted layer(s) merged into their base weights" if merged else ""
    if format == "onnx":
        from evf.deploy import export_onnx

        written = export_onnx(model, output, encoder, backend, overwrite=overwrite)
        graphs = ", ".join(sorted(p.name for p in written.glob("*.onnx")))
        what = f"ONNX {graphs}, checked in onnxruntime{adapters}"
        print(f"evf export: wrote {written} ({encoder} + {backend}, {what})")
        return written
    written = export_release(
        model, output, encoder, backend, hp.encoder_kwargs, hp.backend_kwargs, overwrite=overwrite
    )
    print(f"evf export: wrote {written} ({encoder} + {backend}, released EVF-SAM layout{adapters})")
    return written


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
            backend; no unmerged LoRA adapters), or ``output`` already holds an export and
            ``overwrite`` is False.
    """
    if model.lora is not None:
        raise CheckpointError(
            "the model has LoRA adapters, which the released layout cannot hold: merge them into the "
            "base weights first (model.merge_lora())"
        )
    output = Path(output)
    if (output / CONFIG_NAME).exists() and not overwrite:
        raise CheckpointError(f"{output} already holds an export; pass overwrite=True (--overwrite true)")
    encoder_kwargs = {k: v for k, v in (encoder_kwargs or {}).items() if k not in _NOT_EXPORTED_KWARGS}
    backend_kwargs = {k: v for k, v in (backend_kwargs or {}).items() if k not in _NOT_EXPORTED_KWARGS}
    state, zero_filled = release_state_dict(model)
    output.mkdir(parents=True, exist_ok=True)
    save_file(state, str(output / WEIGHTS_NAME), metadata={"format": "pt"})
    config = release_config(model, encoder, backend, encoder_kwargs, backend_kwargs)
    (output / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    model.encoder.write_release_tokenizer(output)
    log.info("wrote %s (%d tensors, %d zero-filled placeholders)", output, len(state), len(zero_filled))
    return output


def release_state_dict(model: EVFSAM) -> tuple[StateDict, list[str]]:
    """The official-named tensors of ``model``, and the names of the zero-filled placeholders."""
    encoder_state, zero_filled = model.encoder.release_state(ENCODER_PREFIX)
    layout = release_layout(model.backend)
    to_release = CheckpointFormat(
        f"evf_release_export_{model.backend.info.family}",
        prefix_rules(layout.export_rules, target=BACKEND_PREFIX),
    )
    state = {
        **encoder_state,
        **to_release.remap(model.backend.core_module.state_dict(), source="backend"),
        **_PROJECTOR.remap(model.projector.state_dict(), source="projector"),
    }
    if model.presence_head is not None:  # our extension: the official code ignores these keys
        state.update(_PRESENCE.remap(model.presence_head.state_dict(), source="presence_head"))
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}, zero_filled


def release_config(
    model: EVFSAM, encoder: str, backend: str, encoder_kwargs: dict[str, Any], backend_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """config.json: the official fields (scales where the official code builds that size, else
    null) plus our registry names and factory options."""
    layout = release_layout(model.backend)
    return {
        "architectures": [layout.architecture],
        "model_type": "evf",
        "sam_scale": next((s for s, n in layout.scales.items() if n == backend), None),
        "mm_extractor_scale": next((s for s, n in encoder_scales().items() if n == encoder), None),
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
        "evf_presence": model.has_presence,
        PREPROCESSING_KEY: image_preprocessing(model),
    }


__all__ = ["export", "export_release", "release_config", "release_state_dict"]
