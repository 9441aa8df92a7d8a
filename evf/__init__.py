"""EVF: train, evaluate, ablate and run text-prompted Segment Anything models (EVF-SAM).

import evf
model = evf.create_model(encoder="beit3_tiny", backend="sam_tiny")
result = model.predict(image, ["the red circle"])   # result.logits, result.masks
model = evf.load_pretrained("checkpoints/evf-sam2")  # a released EVF-SAM checkpoint directory
report = evf.predict_images(model, "photos/", ["the dog"], output="masks")  # files, folders, manifest
prompts = [evf.Prompt("the dog", box=(10, 20, 200, 180)), evf.Prompt(points=((50, 60),))]
mixed = evf.predict_prompts(model, image, prompts)  # text, points, boxes, or a mix per prompt
"""

from evf.encoders import create_encoder, list_encoders
from evf.model import EVFSAM, Prediction, TrainableParts, create_model
from evf.pretrained import load_pretrained
from evf.sam_backends import create_backend, list_backends

__all__ = [
    "EVFSAM",
    "Prediction",
    "TrainableParts",
    "create_backend",
    "create_encoder",
    "create_model",
    "list_backends",
    "list_encoders",
    "load_pretrained",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``evf.predict_images`` / ``predict_prompts`` / ``Prompt`` load Lightning's data utilities:
    imported on first use."""
    if name in ("predict_images", "predict_prompts"):
        from evf import prediction

        return getattr(prediction, name)
    if name == "Prompt":
        from evf.datamodules.predict import Prompt

        return Prompt
    raise AttributeError(f"module 'evf' has no attribute {name!r}")
