"""BEIT-3's masked data modelling on image-caption pairs (Wang et al., 2022, section 2.2), at tiny scale.

One multiway transformer reads the image patches and the caption together (every layer joint, as
in BEIT-3's pretraining); words of the caption are replaced by ``<mask>`` and predicted from the
image and the rest of the caption. As BEIT-3 masks 50% of the text tokens of an image-text pair
(more than BERT's 15%, so that the image has to fill in what the words leave out), half of the
words are masked here; whole words, since the shapes tokenizer spells rare words piece by piece.
The prediction head is BERT's (dense, GELU, LayerNorm, then the token embedding transposed, plus a
bias).

BEIT-3 also masks image patches and predicts their visual tokens (BEiT v2's tokenizer, a network
trained beforehand). There is no such tokenizer at tiny scale and the text side carries the
grounding EVF fine-tunes, so the vision side trains through the joint attention only.

The encoder is written in unilm's BEIT-3 layout (``{"model": {"beit3.*": ...}}``), which
`create_encoder(..., checkpoint=)` loads strictly in every fusion mode.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from evf.checkpoint import CheckpointFormat
from evf.encoders import create_encoder
from evf.encoders.beit3.checkpoint import beit3_export_rules
from evf.encoders.beit3.fusion import TEXT
from evf.encoders.beit3.modeling import BEiT3Encoder
from evf.encoders.pretraining import IGNORE, CaptionBatch, PretrainObjective, whole_word_mask, word_numbers

MASK_RATE = 0.5


class BEiT3MaskedDataModelling(PretrainObjective):
    """A BEIT-3 with every part built (``early`` fusion over all layers, ``concat`` feature) and an
    MLM head tied to its token embedding.

    Args:
        encoder: the encoder; its plan must build the text side of the last layer.
        mask_rate: share of the caption's words masked.
    """

    def __init__(self, encoder: BEiT3Encoder, mask_rate: float = MASK_RATE) -> None:
        super().__init__()
        if encoder.fusion != "early" or TEXT not in encoder.plan.normed:
            raise ValueError("masked data modelling needs a BEIT-3 built with fusion='early', feature='concat'")
        self.encoder, self.mask_rate = encoder, mask_rate
        tokenizer = encoder.preprocessor.tokenizer
        dim = encoder.text_embed.tokens.embedding_dim
        self.transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.bias = nn.Parameter(torch.zeros(encoder.text_embed.tokens.num_embeddings))
        pieces = tokenizer.pieces()
        specials = torch.zeros(len(pieces), dtype=torch.bool)
        specials[tokenizer.special_ids()] = True
        self.register_buffer("starts", torch.tensor([p.startswith("▁") for p in pieces]), persistent=False)
        self.register_buffer("specials", specials, persistent=False)
        self.mask_id = tokenizer.mask_id

    def forward(self, batch: CaptionBatch, gen: torch.Generator) -> dict[str, torch.Tensor]:
        words = word_numbers(batch.input_ids, self.starts, self.specials)
        masked = whole_word_mask(words, self.mask_rate, gen)
        logits = self.masked_word_logits(batch, masked)
        labels = batch.input_ids.masked_fill(~masked, IGNORE)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        accuracy = (logits.argmax(-1) == batch.input_ids)[masked].float().mean()
        return {"loss": loss, "mlm": loss.detach(), "mlm_accuracy": accuracy}

    def masked_word_logits(self, batch: CaptionBatch, masked: torch.Tensor) -> torch.Tensor:
        ids = batch.input_ids.masked_fill(masked, self.mask_id)
        index = torch.arange(len(ids), device=ids.device)
        text = self.encoder.forward_tokens(batch.pixels, ids, batch.attention_mask, index)[TEXT]
        return self.transform(text) @ self.encoder.text_embed.tokens.weight.T + self.bias

    def save_encoder(self, path: Path) -> Path:
        to_unilm = CheckpointFormat("unilm_beit3 (export)", beit3_export_rules("beit3."))
        state = to_unilm.remap(self.encoder.state_dict(), "pretrained BEIT-3")
        torch.save({"model": {k: v.detach().clone() for k, v in state.items()}}, path)
        return path


def build_objective(encoder: str, tokenizer: str | Path | None = None) -> BEiT3MaskedDataModelling:
    """Masked data modelling around a random-init ``encoder`` (a registered BEIT-3 name)."""
    return BEiT3MaskedDataModelling(create_encoder(encoder, tokenizer=tokenizer, fusion="early", feature="concat"))


__all__ = ["MASK_RATE", "BEiT3MaskedDataModelling", "build_objective"]
