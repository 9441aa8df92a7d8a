"""ViLT's pretraining (Kim et al., 2021, section 3.2) on image-caption pairs, at tiny scale.

Two objectives, each on its own pass, summed as ViLT sums them:

* image-text matching: each caption is swapped, with probability 0.5, for the caption of another
  image of the batch; a linear head on the pooled output (``ITMHead``: hidden -> 2) says whether
  image and caption belong together. (ViLT adds a word-patch alignment term computed by optimal
  transport; it is left out here.)
* masked language modelling on the matched pairs: 15% of the words (whole words, as ViLT masks)
  become ``[MASK]`` and are predicted from the image and the rest of the caption by BERT's head
  (dense, GELU, LayerNorm, then the word embedding transposed, plus a bias).

The encoder is written as a transformers directory (``config.json``, ``model.safetensors`` of
``ViltModel``, the tokenizer's ``vocab.txt``), which `create_encoder(..., checkpoint=, tokenizer=)`
loads strictly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from evf.checkpoint import CheckpointError
from evf.encoders import create_encoder
from evf.encoders.pretraining import IGNORE, CaptionBatch, PretrainObjective, whole_word_mask, word_numbers
from evf.encoders.vilt import ViltEncoder, load_vilt_directory

MASK_RATE, SWAP_RATE = 0.15, 0.5
HEADS_FILE = "pretraining_heads.safetensors"  # beside the weights: the ViLT loader reads only those


class ViltMatchingAndMLM(PretrainObjective):
    """A ViLT in its joint (``early``) mode with an image-text matching head and an MLM head."""

    def __init__(
        self, encoder: ViltEncoder, mask_rate: float = MASK_RATE, swap_rate: float = SWAP_RATE
    ) -> None:
        super().__init__()
        if encoder.fusion != "early":
            raise ValueError("ViLT pretraining reads image and text together: build it with fusion='early'")
        self.encoder, self.mask_rate, self.swap_rate = encoder, mask_rate, swap_rate
        config = encoder.vilt.config
        dim = config.hidden_size
        self.itm_head = nn.Linear(dim, 2)
        self.transform = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=config.layer_norm_eps)
        )
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        tokenizer = encoder.preprocessor.tokenizer
        pieces = tokenizer.pieces()
        starts = torch.zeros(config.vocab_size, dtype=torch.bool)
        starts[: len(pieces)] = torch.tensor([not p.startswith("##") for p in pieces])
        specials = torch.zeros(config.vocab_size, dtype=torch.bool)
        specials[tokenizer.special_ids()] = True
        self.register_buffer("starts", starts, persistent=False)
        self.register_buffer("specials", specials, persistent=False)
        self.mask_id = tokenizer.mask_id

    def _run(self, batch: CaptionBatch, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        pixels = batch.pixels
        mask = torch.ones(pixels.shape[0], *pixels.shape[2:], dtype=torch.long, device=pixels.device)
        return self.encoder.vilt(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels, pixel_mask=mask
        )

    def description(self) -> str:
        return (
            f"ViLT image-text matching ({self.swap_rate:.0%} of the captions swapped) + masked language "
            f"modelling ({self.mask_rate:.0%} of words)"
        )

    def forward(self, batch: CaptionBatch, gen: torch.Generator) -> dict[str, torch.Tensor]:
        words = word_numbers(batch.input_ids, self.starts, self.specials)
        masked = whole_word_mask(words, self.mask_rate, gen)
        logits = self.masked_word_logits(batch, masked)
        labels = batch.input_ids.masked_fill(~masked, IGNORE)
        mlm = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        swapped, ids, attention = self._swap(batch, gen)
        matching = self.itm_head(self._run(batch, ids, attention).pooler_output)
        itm = F.cross_entropy(matching, (~swapped).long())
        return {
            "loss": mlm + itm,
            "mlm": mlm.detach(),
            "itm": itm.detach(),
            "mlm_accuracy": (logits.argmax(-1) == batch.input_ids)[masked].float().mean(),
            "itm_accuracy": (matching.argmax(-1) == (~swapped).long()).float().mean(),
        }

    def _swap(
        self, batch: CaptionBatch, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Swap a ``swap_rate`` share of the captions for another image's: ``[B]`` bool, ids, mask."""
        n = len(batch.input_ids)
        swapped = torch.rand(n, generator=gen) < self.swap_rate
        other = (torch.arange(n) + torch.randint(1, max(n, 2), (n,), generator=gen)) % n
        swapped &= torch.tensor([batch.texts[i] != batch.texts[j] for i, j in enumerate(other.tolist())])
        source = torch.where(swapped, other, torch.arange(n))
        return swapped, batch.input_ids[source], batch.attention_mask[source]

    def masked_word_logits(self, batch: CaptionBatch, masked: torch.Tensor) -> torch.Tensor:
        ids = batch.input_ids.masked_fill(masked, self.mask_id)
        hidden = self._run(batch, ids, batch.attention_mask).last_hidden_state[:, : ids.shape[1]]
        return (
            self.transform(hidden) @ self.encoder.vilt.embeddings.text_embeddings.word_embeddings.weight.T
            + self.bias
        )

    def save(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        self.encoder.vilt.save_pretrained(str(path), safe_serialization=True)
        self.encoder.preprocessor.tokenizer.save(path)
        save_file({k: v.contiguous() for k, v in self.head_state().items()}, str(path / HEADS_FILE))
        return path

    def load(self, path: Path) -> None:
        load_vilt_directory(self.encoder, path)
        if not (path / HEADS_FILE).is_file():
            raise CheckpointError(
                f"{path}: no {HEADS_FILE} (a ViLT directory, not one `evf pretrain-encoder` wrote)"
            )
        self.load_head_state(load_file(str(path / HEADS_FILE)))


def build_objective(
    encoder: str,
    tokenizer: str | Path | None = None,
    objective_kwargs: dict[str, Any] | None = None,
    **encoder_kwargs: Any,
) -> ViltMatchingAndMLM:
    """Matching + MLM pretraining around a random-init ``encoder`` (a registered ViLT name);
    ``objective_kwargs``: ``mask_rate``, ``swap_rate``."""
    return ViltMatchingAndMLM(
        create_encoder(encoder, tokenizer=tokenizer, fusion="early", **encoder_kwargs),
        **(objective_kwargs or {}),
    )


__all__ = ["MASK_RATE", "SWAP_RATE", "ViltMatchingAndMLM", "build_objective"]
