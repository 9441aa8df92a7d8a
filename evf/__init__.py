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

from evf.decode import Prediction
from evf.encoders import create_encoder, list_encoders
from evf.model import EVFSAM, TrainableParts, create_model
from evf.prediction import predict_images
from evf.predictor import Predictor
from evf.pretrained import load_pretrained
from evf.prompts import Prompt
from evf.sam_backends import create_backend, list_backends
from evf.video import predict_video

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
