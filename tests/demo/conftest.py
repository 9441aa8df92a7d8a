"""The demo served on 127.0.0.1 by the tests: a tiny model (BEIT-3 tiny + the shipped shapes-pretrained
``sam_tiny``, so box and point prompts give real masks), a shapes scene, one server per module."""

import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import evf
from evf.assets import SAM_TINY_SHAPES
from evf.datamodules.shapes import ShapesDataset

SCALE = 3  # the 116x113 scene shown at 348x339: big enough to click on in the page


@dataclass(frozen=True)
class Scene:
    path: Path
    image: np.ndarray
    masks: np.ndarray  # [n,H,W] bool, one per expression
    texts: list[str]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_model():
    return evf.create_model("beit3_tiny", "sam_tiny", backend_kwargs={"checkpoint": SAM_TINY_SHAPES}).eval()


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Scene:
    sample = ShapesDataset("train", num_images=1).sample(0, 0)
    image = sample.image.repeat(SCALE, 0).repeat(SCALE, 1)
    masks = np.asarray(sample.masks, dtype=bool).repeat(SCALE, 1).repeat(SCALE, 2)
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(image).save(path)
    return Scene(path, image, masks, list(sample.texts))


@pytest.fixture(scope="module")
def served(demo_model, tmp_path_factory):
    """The demo's URL; the server is closed after the module's tests, whatever happened."""
    from evf.demo.app import build_app

    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        env.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        app = build_app(demo_model)
        port = free_port()
        app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            app.close()
