"""BEIT-3 as the multimodal extractor of EVF-SAM's released checkpoints (`BEIT3_RELEASE`).

A release holds torchscale's ``BEiT3`` keys under a prefix (``mm_extractor.beit3.``; loaded with
`beit3_rules`, written with `beit3_export_rules`) and the XLM-R tokenizer files; its
``mm_extractor_scale`` ``base`` / ``large`` names ``beit3_base`` / ``beit3_large``.

Export writes the tensors torchscale's BEiT3 has and our encoder does not build as **zeros** of the
official shape: the text side of the last layer (query, output, FFN and their norms), the text copy
of the final LayerNorm, and ``vision_embed.mask_token``. With EVF's feature (the image [CLS] after
the last layer) nothing reads them: they only feed the text tokens of the last layer, which the
official code discards (``encoder_out[:, :1]``), and masked-patch prediction, which EVF never runs.
Zeros keep the file self-contained and make the placeholders obvious; copying values from a BEIT-3
checkpoint instead would change no output while mixing another run's tensors into the file
(tests/test_export.py shows the official architecture gives identical features whatever values
those tensors hold).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from evf.checkpoint import CheckpointError, CheckpointFormat, Rule, StateDict
from evf.encoders.base import EncoderRelease
from evf.encoders.beit3.checkpoint import TORCHSCALE_ONLY, beit3_export_rules, beit3_rules
from evf.encoders.beit3.fusion import plan_fusion
from evf.encoders.beit3.modeling import BEiT3Encoder
from evf.encoders.beit3.tokenizer import FAST_NAME, SPM_NAME

_TOKENIZER_FILES = (SPM_NAME, FAST_NAME, "tokenizer_config.json", "special_tokens_map.json")
# What transformers' XLMRobertaTokenizer (EVF-SAM loads it with use_fast=False) needs beside the
# sentencepiece model when the source was a bare file such as unilm's beit3.spm.
_SPECIAL_TOKENS = {
    "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
    "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
}  # fmt: skip


def release_rules(encoder: BEiT3Encoder, prefix: str) -> tuple[Rule, ...]:
    """`beit3_rules` under ``prefix``, dropping what the encoder's fusion plan does not build."""
    return beit3_rules(prefix, encoder.plan)


def release_state(encoder: BEiT3Encoder, prefix: str) -> tuple[StateDict, list[str]]:
    """The encoder's tensors under torchscale's names, zero placeholders included, and their names.

    torchscale builds both multiway copies (``A``: vision, ``B``: text) of every layer part and of
    the final norm, the two of the same shape. The encoder the layout describes builds every part
    but the text query side of the last layer and the text final norm, so each missing tensor is
    the ``B`` copy of a built ``A`` one; plus `TORCHSCALE_ONLY`, ``[1,1,D]``.

    Raises:
        CheckpointError: not early fusion in every layer with the image [CLS] feature.

    An encoder built without sub-LN (``sub_ln=False``) is written without those tensors; EVF reads it
    back through the export's ``evf_encoder_kwargs``, EVF-SAM's code (which builds sub-LN) cannot.
    """
    if encoder.plan != plan_fusion("early", "cls_image", len(encoder.blocks)):
        raise CheckpointError(
            "the released layout describes BEIT-3 with early fusion in every layer and the image [CLS] "
            f"feature (what EVF-SAM's code runs); this model's encoder is {encoder.fusion}/{encoder.feature}"
        )
    to_torchscale = CheckpointFormat("evf_release_export_beit3", beit3_export_rules(prefix))
    state = to_torchscale.remap(encoder.state_dict(), source="encoder")
    missing = {text: v.shape for k, v in state.items() if (text := k.replace(".A.", ".B.")) not in state}
    missing.update({prefix + key: torch.Size((1, 1, encoder.feature_dim)) for key in TORCHSCALE_ONLY})
    dtype = next(encoder.parameters()).dtype
    state.update({k: torch.zeros(shape, dtype=dtype) for k, shape in missing.items()})
    return state, sorted(missing)


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


def write_release_tokenizer(encoder: BEiT3Encoder, directory: Path) -> None:
    """`write_tokenizer` of the file or directory the encoder's tokenizer was loaded from."""
    write_tokenizer(encoder.preprocessor.tokenizer.source, directory)


BEIT3_RELEASE = EncoderRelease(
    scales={"base": "beit3_base", "large": "beit3_large"},
    rules=release_rules,
    export=release_state,
    write_tokenizer=write_release_tokenizer,
)
