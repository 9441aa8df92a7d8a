"""`ShapesDataModule`: the embedded synthetic dataset as a DataModule (quickstart and tests)."""

from __future__ import annotations

from typing import Any

from evf.datamodules.base import EVFDataModule, EVFDataset
from evf.datamodules.shapes import ShapesDataset


class ShapesDataModule(EVFDataModule):
    """Synthetic scenes of coloured shapes with unambiguous referring expressions.

    Args:
        num_train: training images per epoch (fixed scenes; expressions re-drawn each epoch).
        num_val: validation images (every expression of every object).
        num_test: test images.
        max_expressions: expressions drawn per training image (the paper uses up to 3).
        image_size: (min, max) of image height and width in pixels.
        num_objects: (min, max) objects per image.
        no_target_rate: share of expressions that name nothing in the image ("the purple star", "the
            circle on the left" when the only circle is on the right): empty masks, for the
            presence head (`evf.datamodules.shapes.generalized`).
        multi_target_rate: share of expressions that name several objects ("all the circles", "the
            red shapes"): the union of their masks.
        encoder, backend, eval_batch_size: as in `EVFDataModule`, with quick-run defaults (the tiny
            models, 16 images per evaluation batch).
        **kwargs: the other shared options of `EVFDataModule` (``batch_size``, ``seed``, ...).
    """

    def __init__(
        self,
        num_train: int = 2000,
        num_val: int = 100,
        num_test: int = 100,
        max_expressions: int = 3,
        image_size: tuple[int, int] = (112, 144),
        num_objects: tuple[int, int] = (3, 5),
        no_target_rate: float = 0.0,
        multi_target_rate: float = 0.0,
        encoder: str = "beit3_tiny",
        backend: str = "sam_tiny",
        eval_batch_size: int = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(encoder=encoder, backend=backend, eval_batch_size=eval_batch_size, **kwargs)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.max_expressions = max_expressions
        self.scene = {
            "image_size": tuple(image_size),
            "num_objects": tuple(num_objects),
            "no_target_rate": no_target_rate,
            "multi_target_rate": multi_target_rate,
        }
        ShapesDataset("val", 0, **self.scene)  # a bad option fails here, not at the first batch

    def _split(self, split: str) -> ShapesDataset:
        max_expressions = self.max_expressions if split == "train" else None
        return ShapesDataset(split, self.sizes[split], self.seed, max_expressions, **self.scene)

    def train_dataset(self) -> EVFDataset:
        return self._split("train")

    def eval_datasets(self, stage: str) -> dict[str, EVFDataset]:
        split = "val" if stage == "validate" else "test"
        return {f"shapes/{split}": self._split(split)}
