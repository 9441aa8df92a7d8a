"""`ShapesDataModule`: the embedded synthetic dataset as a DataModule (quickstart and tests)."""

from __future__ import annotations

from pathlib import Path

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
        encoder, tokenizer, backend, batch_size, eval_batch_size, num_workers, seed, embedding_cache:
            see `EVFDataModule`.
    """

    def __init__(
        self,
        num_train: int = 2000,
        num_val: int = 100,
        num_test: int = 100,
        max_expressions: int = 3,
        image_size: tuple[int, int] = (112, 144),
        num_objects: tuple[int, int] = (3, 5),
        encoder: str = "beit3_tiny",
        tokenizer: str | Path | None = None,
        backend: str = "sam_tiny",
        batch_size: int = 16,
        eval_batch_size: int = 16,
        num_workers: int = 2,
        seed: int = 0,
        embedding_cache: str | Path | None = None,
    ) -> None:
        super().__init__(
            encoder, tokenizer, backend, batch_size, eval_batch_size, num_workers, seed, embedding_cache
        )
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.max_expressions = max_expressions
        self.scene = {"image_size": tuple(image_size), "num_objects": tuple(num_objects)}

    def _split(self, split: str) -> ShapesDataset:
        max_expressions = self.max_expressions if split == "train" else None
        return ShapesDataset(split, self.sizes[split], self.seed, max_expressions, **self.scene)

    def train_dataset(self) -> EVFDataset:
        return self._split("train")

    def eval_datasets(self, stage: str) -> dict[str, EVFDataset]:
        split = "val" if stage == "validate" else "test"
        return {f"shapes/{split}": self._split(split)}
