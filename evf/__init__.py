"""EVF: train, evaluate, ablate and run text-prompted Segment Anything models (EVF-SAM).

    import evf
    model = evf.create_model(encoder="beit3_tiny", backend="sam_tiny")
    result = model.predict(image, ["the red circle"])   # result.logits, result.masks
"""

from evf.encoders import create_encoder, list_encoders
from evf.model import EVFSAM, Prediction, TrainableParts, create_model
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
]
__version__ = "0.1.0"
