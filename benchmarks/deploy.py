"""Per part and end to end: PyTorch fp32, PyTorch bf16 (CPU autocast) and ONNX Runtime, on the tiny
models of each backend family, and the bf16 masks' agreement with fp32 (IoU per prompt).

Parts: the image encoder (one image), the prompt encoder (4 expressions), the decoder (4 text
prompts), and end to end (set_image + predict of 4 text prompts). PyTorch runs the model's own
parts (`EVFSAM.encode_images`, `encode_prompts`, `backend.decode_sparse`), ONNX Runtime the graphs
of `evf export --format onnx`. Median of ``--repeats`` after one warm-up call.

    .venv/bin/python benchmarks/deploy.py            # about 3 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import evf
from evf.deploy import OnnxPredictor, export_onnx

RESULTS = Path(__file__).resolve().parent / "results"
TEXTS = ["the red circle", "the blue square on the left", "the small triangle", "the largest shape"]


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1000, 2)


def _torch_parts(model: evf.EVFSAM, image: np.ndarray, dtype: torch.dtype | None, repeats: int) -> dict:
    predictor = evf.Predictor(model, dtype=dtype)
    builder = predictor.builder
    inputs = builder.images([image])
    tokens = model.encoder.preprocessor.tokenize(TEXTS)
    index = torch.zeros(len(TEXTS), dtype=torch.long)
    autocast = torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), autocast:
        features = model.encode_images(inputs.sam_pixels)
        sparse = model.encode_prompts(
            inputs.encoder_pixels, tokens["input_ids"], tokens["attention_mask"], index
        ).tokens
        parts = {
            "image_encoder": _median_ms(lambda: model.encode_images(inputs.sam_pixels), repeats),
            "prompt_encoder": _median_ms(
                lambda: model.encode_prompts(
                    inputs.encoder_pixels, tokens["input_ids"], tokens["attention_mask"], index
                ),
                repeats,
            ),
            "decoder": _median_ms(lambda: model.backend.decode_sparse(features, index, sparse), repeats),
        }
    parts["end_to_end"] = _median_ms(lambda: (predictor.set_image(image), predictor.predict(TEXTS)), repeats)
    return parts


def _onnx_parts(directory: Path, image: np.ndarray, repeats: int) -> dict:
    from evf.deploy.numpy_image import transform_image

    predictor = OnnxPredictor(directory)
    spec = predictor.manifest["preprocessing"]
    pixels = transform_image(spec["backend"], image)[None]
    encoder_pixels = transform_image(spec["encoder"], image)[None]
    ids, mask = predictor.tokenize(TEXTS)
    index = np.zeros(len(TEXTS), dtype=np.int64)
    keys = predictor.manifest["feature_keys"]
    features = dict(zip(keys, predictor.sessions["image_encoder"].run(keys, {"pixels": pixels}), strict=True))
    text_inputs = {
        "encoder_pixels": encoder_pixels,
        "input_ids": ids,
        "attention_mask": mask,
        "image_index": index,
    }
    sparse = predictor.sessions["prompt_encoder"].run(None, text_inputs)[0]
    return {
        "image_encoder": _median_ms(
            lambda: predictor.sessions["image_encoder"].run(keys, {"pixels": pixels}), repeats
        ),
        "prompt_encoder": _median_ms(
            lambda: predictor.sessions["prompt_encoder"].run(None, text_inputs), repeats
        ),
        "decoder": _median_ms(
            lambda: predictor.sessions["decoder"].run(
                None, {**features, "image_index": index, "sparse": sparse}
            ),
            repeats,
        ),
        "end_to_end": _median_ms(lambda: (predictor.set_image(image), predictor.predict(TEXTS)), repeats),
    }


def _bf16_iou(model: evf.EVFSAM, images: list[np.ndarray]) -> list[float]:
    ious = []
    for image in images:
        results = []
        for dtype in (None, torch.bfloat16):
            predictor = evf.Predictor(model, dtype=dtype)
            predictor.set_image(image)
            results.append(predictor.predict(TEXTS).masks)
        for a, b in zip(*results, strict=True):
            union = (a | b).sum().item()
            ious.append(1.0 if union == 0 else (a & b).sum().item() / union)
    return ious


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--backends", nargs="+", default=["sam_tiny", "sam2_tiny", "efficient_sam_tiny"])
    parser.add_argument("--out", type=Path, default=RESULTS / "deploy_cpu_tiny.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    results = {
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
        "image": "480x640",
        "rows": [],
    }
    for backend in args.backends:
        model = evf.create_model("beit3_tiny", backend).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        with tempfile.TemporaryDirectory() as tmp:
            export_onnx(model, tmp, "beit3_tiny", backend)
            row = {
                "model": f"beit3_tiny + {backend}",
                "pytorch_fp32": _torch_parts(model, image, None, args.repeats),
                "pytorch_bf16": _torch_parts(model, image, torch.bfloat16, args.repeats),
                "onnxruntime": _onnx_parts(Path(tmp), image, args.repeats),
            }
        ious = _bf16_iou(model, [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(5)])
        row["bf16_mask_iou"] = {
            "min": round(min(ious), 4),
            "mean": round(float(np.mean(ious)), 4),
            "prompts": len(ious),
        }
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
