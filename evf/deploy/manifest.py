"""The name and format tag of an ONNX export's description file (torch-free, shared by the exporter
and the predictor)."""

MANIFEST = "deploy.json"
FORMAT = "evf-onnx/1"

__all__ = ["FORMAT", "MANIFEST"]
