"""Session-wide test settings: no hub access, deterministic CPU math, small thread count."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def shapes_batch():
    """A training batch of 3 synthetic images (up to 3 expressions each) for the tiny models."""
    from evf.datamodules import ShapesDataModule

    dm = ShapesDataModule(num_train=3, num_val=2, num_test=2, num_workers=0)
    dataset = dm.train_dataset()
    return dm.builder([dataset.sample(i, 0) for i in range(len(dataset))])


@pytest.fixture
def tiny_model():
    import evf

    return evf.create_model("beit3_tiny", "sam_tiny", trainable=evf.TrainableParts(image_encoder=True))
