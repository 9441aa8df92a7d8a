"""Text-prompted video segmentation: EVF's prompt token on a frame, SAM-2's video predictor tracking it.

* `predict_video` (``evf predict-video``): masks, ``masks.jsonl``, an overlay video and J&F.
* `evf.video.track`: several expressions as separate objects, re-detection and its merge rule.
* `evf.video.tracker`: sam2's ``SAM2VideoPredictor`` with EVF-SAM2's text prompt, built from our backend.
* `evf.video.frames`: lazily read frames (folder or video file), unreadable frames skipped.
* `evf.video.metrics`: DAVIS's J and F.

See docs/video.md.
"""

from evf.video.errors import VideoError
from evf.video.metrics import Annotations, ClipScores, contour_accuracy, region_similarity
from evf.video.predict import VideoReport, predict_video
from evf.video.track import FrameMasks, TextTracker

__all__ = [
    "Annotations",
    "ClipScores",
    "FrameMasks",
    "TextTracker",
    "VideoError",
    "VideoReport",
    "contour_accuracy",
    "predict_video",
    "region_similarity",
]
