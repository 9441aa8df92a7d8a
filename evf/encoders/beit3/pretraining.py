"""BEIT-3's masked data modelling on image-caption pairs (Wang et al., 2022, section 2.2), at tiny scale.

One multiway transformer reads the image patches and the caption together (every layer joint, as
in BEIT-3's pretraining), both masked in the same pass:

* masked language modelling: as BEIT-3 masks 50% of the text tokens of an image-text pair (more
  than BERT's 15%, so that the image has to fill in what the words leave out), half of the words
  become ``<mask>`` (whole words, since the shapes tokenizer spells rare words piece by piece) and
  are predicted from the image and the rest of the caption by BERT's head (dense, GELU, LayerNorm,
  then the token embedding transposed, plus a bias). ``always_masked`` words are masked wherever
  they occur, on top of the rate: masking the place words ("top", "bottom", "left", "right") with
  15% of the others makes every caption ask where a described object is (docs/pretraining.md,
  "Binding");
* masked image modelling: 40% of the patches, in blocks (BEiT's block-wise masking), become the
  learnt ``mask_token`` and their visual tokens are predicted from the other patches and the
  caption. BEIT-3's visual tokens come from BEiT v2's tokenizer, a network trained beforehand;
  at tiny scale a patch's visual token is its most frequent colour after quantising each channel to
  `COLOUR_LEVELS` levels (64 tokens): a fixed, pixel-only codebook, which makes "a red circle in
  the top left" say what the masked top-left patches hold.

The encoder is written in unilm's BEIT-3 layout (``{"model": {"beit3.*": ...}}``, the mask token
as ``beit3.vision_embed.mask_token``), which `create_encoder(..., checkpoint=)` loads strictly in
every fusion mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from evf.checkpoint import CheckpointError, load_checkpoint
from evf.encoders import create_encoder
from evf.encoders.beit3.checkpoint import unilm_beit3_format, unilm_beit3_state
from evf.encoders.beit3.fusion import TEXT, VISION
from evf.encoders.beit3.modeling import BEiT3Encoder
from evf.encoders.pretraining import IGNORE, CaptionBatch, PretrainObjective, whole_word_mask, word_numbers

MASK_RATE, PATCH_MASK_RATE = 0.5, 0.4
HEADS_KEY = "evf_pretraining_heads"  # beside unilm's "model", which is all the encoder loader reads
COLOUR_LEVELS = 4
VISUAL_TOKENS = COLOUR_LEVELS**3


def visual_tokens(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Each patch's most frequent quantised colour: ``[B,3,E,E]`` images normalised to ``[-1, 1]``
    (mean = std = 0.5) -> ``[B,P]`` ids in ``[0, VISUAL_TOKENS)``."""
    levels = ((pixels * 0.5 + 0.5).clamp(0, 1) * (COLOUR_LEVELS - 1e-3)).long()  # [B,3,E,E]
    codes = (levels[:, 0] * COLOUR_LEVELS + levels[:, 1]) * COLOUR_LEVELS + levels[:, 2]  # [B,E,E]
    patches = F.unfold(codes[:, None].float(), patch_size, stride=patch_size).long()  # [B,p*p,P]
    counts = patches.new_zeros(patches.shape[0], VISUAL_TOKENS, patches.shape[2])
    counts.scatter_add_(1, patches, torch.ones_like(patches))  # [B,V,P]
    return counts.argmax(1)


def block_mask(batch: int, side: int, rate: float, gen: torch.Generator) -> torch.Tensor:
    """BEiT's block-wise masking on a ``side x side`` grid: rectangles of at least 2 patches and aspect
    ratio 0.3–3.3 are added until ``rate`` of the patches are masked -> ``[B, side*side]`` bool."""
    target = round(rate * side * side)
    masks = torch.zeros(batch, side, side, dtype=torch.bool)
    for mask in masks:
        while int(mask.sum()) < target:
            area = float(torch.empty(1).uniform_(2, max(2, target - int(mask.sum())), generator=gen))
            aspect = float(torch.empty(1).uniform_(-1.2, 1.2, generator=gen).exp())
            h = max(1, min(side, round((area * aspect) ** 0.5)))
            w = max(1, min(side, round((area / aspect) ** 0.5)))
            top = int(torch.randint(side - h + 1, (1,), generator=gen))
            left = int(torch.randint(side - w + 1, (1,), generator=gen))
            mask[top : top + h, left : left + w] = True
    return masks.flatten(1)


class BEiT3MaskedDataModelling(PretrainObjective):
    """A BEIT-3 with every part built (``early`` fusion over all layers, ``concat`` feature) and an
    MLM head tied to its token embedding.

    Args:
        encoder: the encoder; its plan must build the text side of the last layer.
        mask_rate: share of the caption's words masked.
        patch_mask_rate: share of the patches masked (in blocks).
        always_masked: words masked wherever they occur, on top of ``mask_rate``; each must be one
            piece of the tokenizer.

    Raises:
        ValueError: an ``always_masked`` word the tokenizer splits.
    """

    def __init__(
        self,
        encoder: BEiT3Encoder,
        mask_rate: float = MASK_RATE,
        patch_mask_rate: float = PATCH_MASK_RATE,
        always_masked: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if encoder.fusion != "early" or TEXT not in encoder.plan.normed:
            raise ValueError(
                "masked data modelling needs a BEIT-3 built with fusion='early', feature='concat'"
            )
        self.encoder, self.mask_rate, self.patch_mask_rate = encoder, mask_rate, patch_mask_rate
        tokenizer = encoder.preprocessor.tokenizer
        dim = encoder.text_embed.tokens.embedding_dim
        self.transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.mask_token = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.image_head = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim), nn.Linear(dim, VISUAL_TOKENS)
        )
        self.bias = nn.Parameter(torch.zeros(encoder.text_embed.tokens.num_embeddings))
        pieces = tokenizer.pieces()
        specials = torch.zeros(len(pieces), dtype=torch.bool)
        specials[tokenizer.special_ids()] = True
        self.register_buffer("starts", torch.tensor([p.startswith("▁") for p in pieces]), persistent=False)
        self.register_buffer("specials", specials, persistent=False)
        self.mask_id = tokenizer.mask_id
        self.always_masked = tuple(always_masked)
        self.register_buffer(
            "always_masked_ids", self._single_piece_ids(self.always_masked), persistent=False
        )

    def _single_piece_ids(self, words: tuple[str, ...]) -> torch.Tensor:
        tokenize = self.encoder.preprocessor.tokenize
        ids = []
        for word in words:
            tokens = tokenize([word])
            inner = tokens["input_ids"][0, 1 : int(tokens["attention_mask"][0].sum()) - 1]  # no <s>, </s>
            if len(inner) != 1:
                raise ValueError(f"always_masked: {word!r} is {len(inner)} pieces of the tokenizer, not one")
            ids.append(int(inner[0]))
        return torch.tensor(ids, dtype=torch.long)

    def description(self) -> str:
        always = f" and every {', '.join(repr(w) for w in self.always_masked)}" if self.always_masked else ""
        return (
            f"BEIT-3 masked data modelling: {self.mask_rate:.0%} of the caption's words masked{always}, "
            f"predicted from image + text; {self.patch_mask_rate:.0%} of the patches masked in blocks"
        )

    def forward(self, batch: CaptionBatch, gen: torch.Generator) -> dict[str, torch.Tensor]:
        masked = self.text_mask(batch.input_ids, gen)
        embed = self.encoder.vision_embed
        side = embed.img_size // embed.proj.kernel_size[0]
        patches = block_mask(len(batch.pixels), side, self.patch_mask_rate, gen).to(batch.pixels.device)
        tokens = self._tokens(batch, masked, patches)
        logits = self._word_logits(tokens[TEXT])
        labels = batch.input_ids.masked_fill(~masked, IGNORE)
        mlm = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        image_logits = self.image_head(tokens[VISION][:, 1:][patches])
        image_labels = visual_tokens(batch.pixels, embed.proj.kernel_size[0])[patches]
        mim = F.cross_entropy(image_logits, image_labels)
        return {
            "loss": mlm + mim,
            "mlm": mlm.detach(),
            "mim": mim.detach(),
            "mlm_accuracy": (logits.argmax(-1) == batch.input_ids)[masked].float().mean(),
            "mim_accuracy": (image_logits.argmax(-1) == image_labels).float().mean(),
        }

    def text_mask(self, input_ids: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The masked tokens of ``[B,L]`` ids: ``mask_rate`` of the words, whole, and every
        ``always_masked`` word -> ``[B,L]`` bool."""
        words = word_numbers(input_ids, self.starts, self.specials)
        return whole_word_mask(words, self.mask_rate, gen) | torch.isin(input_ids, self.always_masked_ids)

    def _tokens(self, batch: CaptionBatch, masked: torch.Tensor, patches: torch.Tensor | None):
        ids = batch.input_ids.masked_fill(masked, self.mask_id)
        index = torch.arange(len(ids), device=ids.device)
        return self.encoder.forward_tokens(
            batch.pixels,
            ids,
            batch.attention_mask,
            index,
            patches,
            None if patches is None else self.mask_token,
        )

    def _word_logits(self, text: torch.Tensor) -> torch.Tensor:
        return self.transform(text) @ self.encoder.text_embed.tokens.weight.T + self.bias

    def masked_word_logits(self, batch: CaptionBatch, masked: torch.Tensor) -> torch.Tensor:
        return self._word_logits(self._tokens(batch, masked, None)[TEXT])

    def save(self, path: Path) -> Path:
        state = unilm_beit3_state(self.encoder.state_dict(), "pretrained BEIT-3")
        state["beit3.vision_embed.mask_token"] = self.mask_token.detach().view(1, 1, -1)  # unilm's shape
        heads = {k: v for k, v in self.head_state().items() if k != "mask_token"}
        torch.save({"model": {k: v.detach().clone() for k, v in state.items()}, HEADS_KEY: heads}, path)
        return path

    def load(self, path: Path) -> None:
        load_checkpoint(self.encoder, path, unilm_beit3_format(self.encoder.plan))
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if HEADS_KEY not in saved:
            raise CheckpointError(
                f"{path}: no '{HEADS_KEY}' (an encoder file, not one `evf pretrain-encoder` wrote)"
            )
        self.load_head_state(
            {**saved[HEADS_KEY], "mask_token": saved["model"]["beit3.vision_embed.mask_token"].flatten()}
        )


def build_objective(
    encoder: str,
    tokenizer: str | Path | None = None,
    objective_kwargs: dict[str, Any] | None = None,
    **encoder_kwargs: Any,
) -> BEiT3MaskedDataModelling:
    """Masked data modelling around a random-init ``encoder`` (a registered BEIT-3 name);
    ``objective_kwargs``: ``mask_rate``, ``patch_mask_rate``, ``always_masked``."""
    return BEiT3MaskedDataModelling(
        create_encoder(encoder, tokenizer=tokenizer, fusion="early", **encoder_kwargs, feature="concat"),
        **(objective_kwargs or {}),
    )


__all__ = [
    "MASK_RATE",
    "PATCH_MASK_RATE",
    "VISUAL_TOKENS",
    "BEiT3MaskedDataModelling",
    "block_mask",
    "build_objective",
    "visual_tokens",
]
