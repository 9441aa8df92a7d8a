"""Deployment: ONNX graphs of a model (`export_onnx`, ``evf export --format onnx``) and a predictor
that runs them on onnxruntime with numpy pre- and post-processing (`OnnxPredictor`, torch-free).

Names are imported on first use, so that ``from evf.deploy import OnnxPredictor`` loads no torch.
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "export_onnx": "evf.deploy.onnx_export",
    "OnnxPredictor": "evf.deploy.onnx_predictor",
    "OnnxPrediction": "evf.deploy.onnx_predictor",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'evf.deploy' has no attribute {name!r}")
    return getattr(import_module(_LAZY[name]), name)


__all__ = ["OnnxPrediction", "OnnxPredictor", "export_onnx"]
