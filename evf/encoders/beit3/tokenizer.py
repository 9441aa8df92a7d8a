"""BEIT-3's tokenizer: an XLM-R style sentencepiece model with fairseq ids.

Loaded through transformers' ``XLMRobertaTokenizer.from_pretrained(directory)``, which needs the
model file to be named ``sentencepiece.bpe.model`` inside a directory. (In transformers 5.x,
``XLMRobertaTokenizer(vocab_file=...)`` silently builds a 5-token vocabulary, so it is not used.)
Ids: ``<s>`` = 0, ``<pad>`` = 1, ``</s>`` = 2, ``<unk>`` = 3, and sentencepiece piece ``i`` -> ``i + 1``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

SPM_NAME = "sentencepiece.bpe.model"
FAST_NAME = "tokenizer.json"


class BEiT3Tokenizer:
    """Expressions -> ``<s> pieces </s>``, right-padded with ``<pad>``, at most ``max_length`` ids.

    Args:
        hf_tokenizer: a loaded ``XLMRobertaTokenizer``.
        max_length: most ids per expression, special tokens included; longer expressions keep
            their first ``max_length - 1`` ids and ``</s>``, and a warning counts them.
        source: the file or directory it was loaded from (`evf export` copies it).
    """

    def __init__(self, hf_tokenizer: Any, max_length: int, source: Path | None = None) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must leave room for <s> and </s>, got {max_length}")
        self.max_length = max_length
        self.source = source
        self._hf = hf_tokenizer

    @property
    def vocab_size(self) -> int:
        """Every id this tokenizer can produce (``<mask>`` included) is below this."""
        return len(self._hf)

    @property
    def mask_id(self) -> int:
        """``<mask>``, the token of masked language modelling (pretraining only)."""
        return self._hf.mask_token_id

    def pieces(self) -> list[str]:
        """The piece of every id (``▁`` opens a word), ``vocab_size`` of them."""
        return self._hf.convert_ids_to_tokens(list(range(self.vocab_size)))

    def special_ids(self) -> list[int]:
        """``<s>``, ``<pad>``, ``</s>``, ``<unk>``, ``<mask>``."""
        return list(self._hf.all_special_ids)

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Ids per expression before truncation, ``<s>`` and ``</s>`` included."""
        return [len(x) for x in self._ids(texts)]

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        if isinstance(texts, str):
            raise TypeError("expected a sequence of expressions, got a single string")
        return self._hf(list(texts), add_special_tokens=True)["input_ids"]

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``N`` expressions -> ``input_ids`` and ``attention_mask``, both ``[N,L]`` long."""
        ids = self._ids(texts)
        truncated = sum(len(x) > self.max_length for x in ids)
        if truncated:
            log.warning("truncated %d of %d expression(s) to %d tokens", truncated, len(ids), self.max_length)
            ids = [
                x[: self.max_length - 1] + [self._hf.eos_token_id] if len(x) > self.max_length else x
                for x in ids
            ]
        length = max((len(x) for x in ids), default=0)
        input_ids = torch.full((len(ids), length), self._hf.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), length), dtype=torch.long)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
            attention_mask[row, : len(x)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}


def build_beit3_tokenizer(
    path: str | Path | None, max_length: int = 128, default: Path | None = None
) -> BEiT3Tokenizer:
    """Load BEIT-3's sentencepiece model.

    Args:
        path: the model file (unilm's ``beit3.spm``) or a directory holding ``sentencepiece.bpe.model``
            or a ``tokenizer.json`` saved from it (e.g. an EVF-SAM release).
        max_length: most ids per expression, special tokens included.
        default: used when ``path`` is None (the tiny variant ships its tokenizer in ``evf/assets``).

    Raises:
        ValueError: no path and no default.
        FileNotFoundError: the file, or the model file in the directory, does not exist.
    """
    path = default if path is None else path
    if path is None:
        raise ValueError(
            "BEIT-3 needs its sentencepiece model: pass `tokenizer=` to the encoder factory (config key "
            f"`model.tokenizer`) with unilm's `beit3.spm` or a directory holding `{SPM_NAME}`"
        )
    path = Path(path)
    if path.is_dir():
        if not (path / SPM_NAME).is_file() and not (path / FAST_NAME).is_file():
            raise FileNotFoundError(f"BEIT-3 tokenizer directory {path} has no {SPM_NAME} or {FAST_NAME}")
        return BEiT3Tokenizer(_load_directory(path), max_length, source=path)
    if not path.is_file():
        raise FileNotFoundError(f"BEIT-3 tokenizer not found: {path}")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(path, Path(tmp) / SPM_NAME)
        return BEiT3Tokenizer(_load_directory(Path(tmp)), max_length, source=path)


def _load_directory(directory: Path) -> Any:
    from transformers import XLMRobertaTokenizer  # deferred: importing transformers takes seconds

    return XLMRobertaTokenizer.from_pretrained(str(directory))
