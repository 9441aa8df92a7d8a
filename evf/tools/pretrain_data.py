"""The data side of ``evf pretrain-encoder``: caption sources, seeded caption batches and the probe.

Every draw is a pure function of ``(seed, stream, step, item)`` (`evf.datamodules.common.item_rng`),
so a resumed run reads exactly the batches an uninterrupted one would; the probe numbers are those
of ``evf pretrain-encoder``'s card (module doc of `evf.tools.pretrain_encoder`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from evf.datamodules.captions import CaptionSource, CocoCaptions, JsonlCaptions, ShapesCaptions
from evf.datamodules.common import item_rng
from evf.datamodules.shapes.captions import probe_sentence
from evf.datamodules.shapes.expressions import COLOURS, SHAPES
from evf.encoders.pretraining import CaptionBatch, PretrainObjective
from evf.errors import UsageError

CAPTION_STREAM, ORDER_STREAM, PROBE_STREAM = 0xCA9, 0x0D3E, 0x960B


def caption_sources(
    captions: Path | None,
    images: Path | None,
    num_train: int,
    num_probe: int,
    seed: int,
    max_sentences: int,
    scene_objects: tuple[int, int] = (3, 5),
) -> tuple[CaptionSource, CaptionSource, list[int], list[int]]:
    """Training and probe sources with the indices each uses (shapes: training scenes of
    ``scene_objects`` objects, probe scenes of 3-5 as the task's)."""
    if captions is None:
        train = ShapesCaptions(num_train, seed, "train", max_sentences, scene_objects)
        probe = ShapesCaptions(num_probe, seed, "val", max_sentences)
        return train, probe, list(range(num_train)), list(range(num_probe))
    captions = Path(captions)
    if captions.suffix == ".jsonl":
        source: CaptionSource = JsonlCaptions(captions)
    elif captions.suffix == ".json":
        if images is None:
            raise UsageError(f"{captions}: COCO captions need --images, the folder of their images")
        source = CocoCaptions(captions, images)
    else:
        raise UsageError(
            f"--captions {captions}: expected a .jsonl of image-caption lines or COCO captions_*.json"
        )
    held_out = min(num_probe, len(source) // 5)  # the last pairs are the probe's, never trained on
    indices = list(range(len(source)))
    return source, source, indices[: len(source) - held_out], indices[len(source) - held_out :]


class CaptionBatcher:
    """Caption batches of a source, a pure function of ``(seed, step)``; shapes pixels are kept."""

    def __init__(
        self, objective: PretrainObjective, source: CaptionSource, indices: list[int], seed: int
    ) -> None:
        self.preprocessor = objective.encoder.preprocessor
        self.source, self.indices, self.seed = source, indices, seed
        self._pixels: dict[int, torch.Tensor] | None = {} if isinstance(source, ShapesCaptions) else None
        self._order: tuple[int, list[int]] = (-1, [])

    def order(self, epoch: int) -> list[int]:
        """The indices in epoch ``epoch``'s seeded order (the last epoch's is kept: asked every step)."""
        if self._order[0] != epoch:
            rng = item_rng(self.seed, ORDER_STREAM, epoch)
            self._order = (epoch, [self.indices[i] for i in rng.permutation(len(self.indices))])
        return self._order[1]

    def indices_of_step(self, step: int, batch_size: int) -> list[int]:
        first = step * batch_size
        out: list[int] = []
        while len(out) < batch_size:
            epoch, offset = divmod(first + len(out), len(self.indices))
            out += self.order(epoch)[offset : offset + batch_size - len(out)]
        return out

    def batch(self, indices: list[int], step: int, stream: int = CAPTION_STREAM) -> CaptionBatch:
        pixels, texts = [], []
        for k, index in enumerate(indices):
            image, caption = self.source.pair(index, item_rng(self.seed, stream, step, k))
            pixels.append(self._transform(index, image))
            texts.append(caption)
        tokens = self.preprocessor.tokenize(texts)
        return CaptionBatch(torch.stack(pixels), tokens["input_ids"], tokens["attention_mask"], texts)

    def _transform(self, index: int, image: np.ndarray) -> torch.Tensor:
        if self._pixels is None:
            return self.preprocessor.transform_image(image)
        if index not in self._pixels:
            self._pixels[index] = self.preprocessor.transform_image(image)
        return self._pixels[index]


@torch.no_grad()
def probe(objective: PretrainObjective, batcher: CaptionBatcher, batch_size: int = 50) -> dict[str, float]:
    """The probe numbers of ``objective`` on ``batcher``'s (held-out) pairs; see the module doc."""
    objective.eval()
    sums: dict[str, list[float]] = {}
    chunks = [batcher.indices[i : i + batch_size] for i in range(0, len(batcher.indices), batch_size)]
    for k, chunk in enumerate(chunks):
        batch = batcher.batch(chunk, k, PROBE_STREAM)
        gen = torch.Generator().manual_seed(PROBE_STREAM + k)
        torch.manual_seed(PROBE_STREAM + k)  # ViLT's patch sampling draws from the global RNG
        for name, value in objective(batch, gen).items():
            if name.endswith("accuracy"):
                sums.setdefault(name, []).append(float(value))
        scores = objective.retrieval_scores(batch)
        if scores is not None and len(chunk) > 1:
            target = torch.arange(len(chunk))
            sums.setdefault("image_to_text_r1", []).append(float((scores.argmax(1) == target).float().mean()))
            sums.setdefault("text_to_image_r1", []).append(float((scores.argmax(0) == target).float().mean()))
        if isinstance(batcher.source, ShapesCaptions):
            for name, value in _word_probes(objective, batcher, chunk).items():
                sums.setdefault(name, []).append(value)
    objective.train()
    out = {name: round(float(np.mean(values)), 4) for name, values in sorted(sums.items())}
    if "image_to_text_r1" in out:
        out["retrieval_pool"] = min(batch_size, len(batcher.indices))
    return out


PROBED_WORDS: dict[str, tuple[str, ...]] = {
    "colour": COLOURS,
    "shape": SHAPES,
    "row": ("top", "bottom"),
    "column": ("left", "right"),
}
"""Each probed word of the probe sentence and its choices. A place word is probed only where the
sentence has one ("in the top left" has both, "on the left" only a column, "in the centre" neither);
row and column words score together as ``masked_place_accuracy``."""


def _word_probes(objective: PretrainObjective, batcher: CaptionBatcher, chunk: list[int]) -> dict[str, float]:
    """Masked-word accuracies on every object's probe sentence ("there is a red circle in the top left"),
    one word masked at a time and predicted among its choices; empty for a family without masked
    language modelling.

    * ``masked_colour_accuracy`` / ``masked_shape_accuracy``: among the four colours / three shapes.
      Knowing which colours the image holds scores well above chance without finding the object.
    * ``masked_colour_in_scene_accuracy``: the colour among those the scene holds (chance: one over
      their number), and ``masked_place_accuracy``: the row word between "top" and "bottom", the
      column word between "left" and "right" (chance 0.5). Both need the described object found in
      the image: they measure binding, which the fine-tuned token needs to point at a referent.
    """
    tokenize = batcher.preprocessor.tokenize
    pixels, texts, scene_colours = [], [], []
    for index in chunk:
        image, objects = batcher.source.scene(index)
        height, width = image.shape[:2]
        for obj in objects:
            pixels.append(batcher._transform(index, image))
            texts.append(probe_sentence(obj, width, height))
            scene_colours.append([c in {o.colour for o in objects} for c in COLOURS])
    tokens = tokenize(texts)
    ids, attention = tokens["input_ids"], tokens["attention_mask"]
    images = torch.stack(pixels)
    hits: dict[str, list[bool]] = {}
    for word, choices in PROBED_WORDS.items():
        choice_ids = torch.tensor([int(tokenize([c])["input_ids"][0, 1]) for c in choices])
        masked = torch.isin(ids, choice_ids)  # the probed word: at most one per sentence
        rows = masked.any(1)
        said = [text for text, has_word in zip(texts, rows.tolist(), strict=True) if has_word]
        batch = CaptionBatch(images[rows], ids[rows], attention[rows], said)
        logits = objective.masked_word_logits(batch, masked[rows])
        if logits is None:
            return {}
        scores = logits[masked[rows]][:, choice_ids]
        target = (ids[masked][:, None] == choice_ids).long().argmax(1)  # the word the sentence says
        name = "place" if word in ("row", "column") else word
        hits.setdefault(f"masked_{name}_accuracy", []).extend((scores.argmax(-1) == target).tolist())
        if word == "colour":
            present = torch.tensor(scene_colours)[rows]
            in_scene = scores.masked_fill(~present, float("-inf")).argmax(-1)
            hits["masked_colour_in_scene_accuracy"] = (in_scene == target).tolist()
    return {name: float(np.mean(values)) for name, values in hits.items()}


def describe_source(source: CaptionSource, count: int) -> str:
    if isinstance(source, ShapesCaptions):
        return (
            f"{count} shapes scenes of {source.num_objects[0]}-{source.num_objects[1]} objects (scene stream "
            f"{source.name}, seed {source.seed}, none of the task's scenes) with generated whole-scene "
            f"captions of 1-{source.max_sentences} sentences"
        )
    return f"{count} images of {source.name}"


__all__ = ["CAPTION_STREAM", "CaptionBatcher", "caption_sources", "describe_source", "probe"]
