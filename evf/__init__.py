"""EVF: train, evaluate, ablate and run text-prompted Segment Anything models (EVF-SAM).

import evf
model = evf.create_model(encoder="beit3_tiny", backend="sam_tiny").eval()
predictor = evf.Predictor(model)                     # like segment-anything's SamPredictor
predictor.set_image(image)                           # the image encoder runs once
result = predictor.predict(["the red circle"])       # result.logits, result.masks, result.scores
prompts = [evf.Prompt("the dog", box=(10, 20, 200, 180)), evf.Prompt(points=((50, 60),))]
mixed = predictor.predict(prompts)                   # text, points, boxes, or a mix per prompt
model = evf.load_pretrained("checkpoints/evf-sam2")  # a released EVF-SAM checkpoint directory
report = evf.predict_images(model, "photos/", ["the dog"], output="masks")  # files, folders, manifest
video = evf.predict_video(model, "clip.mp4", ["the dog"], output="out")  # SAM-2 backends: tracked masks
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

# Imported on first use: `import evf` stays light, and torch-free parts (evf.deploy.OnnxPredictor,
# evf.prompts) load without torch.
_LAZY = {
    "EVFSAM": "evf.model",
    "Prediction": "evf.decode",
    "Predictor": "evf.predictor",
    "Prompt": "evf.prompts",
    "TrainableParts": "evf.model",
    "create_backend": "evf.sam_backends",
    "create_encoder": "evf.encoders",
    "create_model": "evf.model",
    "list_backends": "evf.sam_backends",
    "list_encoders": "evf.encoders",
    "load_pretrained": "evf.pretrained",
    "predict_images": "evf.prediction",
    "predict_video": "evf.video",
}

if TYPE_CHECKING:
    from evf.decode import Prediction
    from evf.encoders import create_encoder, list_encoders
    from evf.model import EVFSAM, TrainableParts, create_model
    from evf.prediction import predict_images
    from evf.predictor import Predictor
    from evf.pretrained import load_pretrained
    from evf.prompts import Prompt
    from evf.sam_backends import create_backend, list_backends
    from evf.video import predict_video


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'evf' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "EVFSAM",
    "Prediction",
    "Predictor",
    "Prompt",
    "TrainableParts",
    "create_backend",
    "create_encoder",
    "create_model",
    "list_backends",
    "list_encoders",
    "load_pretrained",
    "predict_images",
    "predict_video",
]
__version__ = "0.1.0"
