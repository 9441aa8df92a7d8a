"""EVF: train, evaluate, ablate and run text-prompted Segment Anything models (EVF-SAM).

import evf
model = evf.create_model(encoder="beit3_tiny", backend="sam_tiny")
result = model.predict(image, ["the red circle"])   # result.logits, result.masks
model = evf.load_pretrained("checkpoints/evf-sam2")  # a released EVF-SAM checkpoint directory
report = evf.predict_images(model, "photos/", ["the dog"], output="masks")  # files, folders, manifest
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
    """``evf.predict_images`` (`evf.prediction`) loads Lightning's data utilities: import it on first use."""
    if name == "predict_images":
        from evf.prediction import predict_images

        return predict_images
    raise AttributeError(f"module 'evf' has no attribute {name!r}")
