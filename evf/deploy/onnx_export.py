"""``evf export --format onnx``: a model as four ONNX graphs, checked in onnxruntime before it returns.

* ``image_encoder.onnx``: backend-normalised pixels ``[B,3,S,S]`` -> the backend's image features
  (SAM, EfficientSAM: ``image_embeddings``; SAM-2: ``image_embed``, ``high_res_s4``, ``high_res_s8``).
* ``prompt_encoder.onnx``: encoder pixels ``[B,3,E,E]``, ``input_ids`` / ``attention_mask``
  ``[N,L]``, ``image_index`` ``[N]`` -> ``text_tokens`` ``[N,1,C]`` (and ``presence_logits`` ``[N]``
  with a presence head).
* ``geometry.onnx``: point and box prompts as ``coords`` ``[N,K,2]`` / ``labels`` ``[N,K]`` (one
  label convention for every family, `evf.deploy.geometry`) -> sparse tokens ``[N,K,C]``.
* ``decoder.onnx``: the image features, ``image_index`` ``[N]`` and the finished sparse prompt
  ``[N,T,C]`` (geometry tokens, then the text token) -> ``low_res_logits`` ``[N,1,h,w]`` and ``iou``
  ``[N]``.

ONNX graphs have no optional inputs, and the prompt kinds (text, points, box, their mixes) differ
in how many sparse tokens they have; so the sparse prompt is put together outside the decoder, as
segment-anything's ONNX export takes points and boxes as one labelled list. Batch, prompt count,
text length, point count and token count are dynamic (EfficientSAM pads points to a fixed
``max_points``). ``deploy.json`` beside the graphs describes their inputs and outputs, both
preprocessings, the geometry rule and the tokenizer files (written beside it) for
`evf.deploy.OnnxPredictor`. Graphs whose weights pass 1 GiB keep them in ONNX external data
(``<graph>.onnx.data``).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from evf.checkpoint import CheckpointError
from evf.deploy.manifest import FORMAT, MANIFEST
from evf.model import EVFSAM

log = logging.getLogger(__name__)

EXTERNAL_DATA_BYTES = 1 << 30
PARITY_ATOL = 1e-4


class ImageEncoderGraph(nn.Module):
    def __init__(self, model: EVFSAM, keys: list[str]) -> None:
        super().__init__()
        self.backend, self.keys = model.backend, keys

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backend.encode_image(pixels)
        return tuple(features[k] for k in self.keys)


class PromptEncoderGraph(nn.Module):
    def __init__(self, model: EVFSAM) -> None:
        super().__init__()
        self.model = model

    def forward(self, encoder_pixels, input_ids, attention_mask, image_index) -> tuple[torch.Tensor, ...]:
        encoded = self.model.encode_prompts(encoder_pixels, input_ids, attention_mask, image_index)
        return (
            (encoded.tokens,)
            if encoded.presence_logits is None
            else (encoded.tokens, encoded.presence_logits)
        )


class GeometryGraph(nn.Module):
    def __init__(self, model: EVFSAM) -> None:
        super().__init__()
        self.backend = model.backend

    def forward(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.backend.embed_geometry(coords, labels)


class DecoderGraph(nn.Module):
    """Features (one tensor per key of ``keys``), ``image_index`` and the sparse prompt -> low-res
    logits and IoU. torch.export needs named arguments: `_decoder_graph` makes the signature."""

    def __init__(self, model: EVFSAM, keys: list[str]) -> None:
        super().__init__()
        self.backend, self.keys = model.backend, keys

    def decode(
        self, features: tuple[torch.Tensor, ...], image_index, sparse
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.backend.decode_sparse(dict(zip(self.keys, features, strict=True)), image_index, sparse)
        return out.logits, out.iou[:, 0]


class OneLevelDecoderGraph(DecoderGraph):
    def forward(self, image_embeddings, image_index, sparse):
        return self.decode((image_embeddings,), image_index, sparse)


class ThreeLevelDecoderGraph(DecoderGraph):
    def forward(self, high_res_s4, high_res_s8, image_embed, image_index, sparse):
        return self.decode((high_res_s4, high_res_s8, image_embed), image_index, sparse)


def _decoder_graph(model: EVFSAM, keys: list[str]) -> DecoderGraph:
    for cls in (OneLevelDecoderGraph, ThreeLevelDecoderGraph):
        if list(inspect.signature(cls.forward).parameters)[1:-2] == keys:
            return cls(model, keys)
    raise CheckpointError(f"no ONNX decoder graph for image features {keys}")


def _examples(model: EVFSAM, keys: list[str], seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Inputs to trace and check each graph with: sizes >= 2 and pairwise different, so that no
    dynamic dimension is specialised to 0 / 1 or tied to another."""
    gen = torch.Generator().manual_seed(seed)
    backend, encoder = model.backend, model.encoder.preprocessor
    size, e_size = backend.info.image.size, encoder.image.size
    b, n, length, k = 2, 3, 5, 4
    k = getattr(backend, "max_points", k)
    ids = torch.randint(4, 20, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, 3:] = 0
    ids[0, 3:] = 1
    features = {key: torch.randn(b, *shape, generator=gen) for key, shape in backend.feature_shapes().items()}
    coords = torch.rand(n, k, 2, generator=gen) * size
    labels = torch.randint(-1, 4, (n, k), generator=gen)
    return {
        "image_encoder": {"pixels": torch.randn(b, 3, size, size, generator=gen)},
        "prompt_encoder": {
            "encoder_pixels": torch.randn(b, 3, e_size, e_size, generator=gen),
            "input_ids": ids,
            "attention_mask": mask,
            "image_index": torch.tensor([0, 1, 1]),
        },
        "geometry": {"coords": coords, "labels": labels},
        "decoder": {
            **{key: features[key] for key in keys},
            "image_index": torch.tensor([0, 1, 1]),
            "sparse": torch.randn(n, k + 1, backend.prompt_dim, generator=gen),
        },
    }


def _dims(model: EVFSAM, keys: list[str]) -> dict[str, dict[str, dict[int, Any]]]:
    batch, prompts = torch.export.Dim("images", min=1, max=1024), torch.export.Dim("prompts", min=1, max=4096)
    text = torch.export.Dim("text_length", min=2, max=4096)
    points = None if hasattr(model.backend, "max_points") else torch.export.Dim("points", min=1, max=1024)
    tokens = torch.export.Dim("tokens", min=1, max=1024)
    return {
        "image_encoder": {"pixels": {0: batch}},
        "prompt_encoder": {
            "encoder_pixels": {0: batch},
            "input_ids": {0: prompts, 1: text},
            "attention_mask": {0: prompts, 1: text},
            "image_index": {0: prompts},
        },
        "geometry": {
            "coords": {0: prompts} | ({1: points} if points else {}),
            "labels": {0: prompts} | ({1: points} if points else {}),
        },
        "decoder": {
            **{key: {0: batch} for key in keys},
            "image_index": {0: prompts},
            "sparse": {0: prompts, 1: tokens},
        },
    }


def _graphs(model: EVFSAM, keys: list[str]) -> dict[str, tuple[nn.Module, list[str]]]:
    prompt_outputs = ["text_tokens"] + (["presence_logits"] if model.has_presence else [])
    return {
        "image_encoder": (ImageEncoderGraph(model, keys), keys),
        "prompt_encoder": (PromptEncoderGraph(model), prompt_outputs),
        "geometry": (GeometryGraph(model), ["sparse"]),
        "decoder": (_decoder_graph(model, keys), ["low_res_logits", "iou"]),
    }


def _weight_bytes(program: Any) -> int:
    """Bytes of the weights a graph holds: only what it uses (a geometry graph built around the
    whole backend keeps the prompt encoder's few tensors)."""
    values = program.model.graph.initializers.values()
    return sum(v.const_value.nbytes for v in values if v.const_value is not None)


def export_onnx(
    model: EVFSAM, output: str | Path, encoder: str, backend: str, overwrite: bool = False
) -> Path:
    """Write ``model`` (registered as ``encoder`` + ``backend``) as ONNX graphs, ``deploy.json`` and
    its tokenizer files in ``output``; every graph is run in onnxruntime on example inputs and must
    equal PyTorch within ``PARITY_ATOL`` before this returns.

    Raises:
        CheckpointError: ``output`` holds an export (and not ``overwrite``), the model has unmerged
            LoRA adapters, or its encoder has no release tokenizer (BEIT-3 only).
        RuntimeError: a graph disagrees with PyTorch in onnxruntime.
    """
    import onnxruntime as ort

    output = Path(output)
    if (output / MANIFEST).exists() and not overwrite:
        raise CheckpointError(
            f"{output} already holds an ONNX export; pass overwrite=True (--overwrite true)"
        )
    if model.lora is not None:
        raise CheckpointError("the model has LoRA adapters: merge them first (model.merge_lora())")
    model = model.float().eval()
    keys = sorted(model.backend.feature_shapes())
    examples, dims = _examples(model, keys), _dims(model, keys)
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:  # refuses an encoder without a release tokenizer
        model.encoder.write_release_tokenizer(Path(tmp))
        tokenizer_files = sorted(p.name for p in Path(tmp).iterdir())
        for name in tokenizer_files:
            shutil.copyfile(Path(tmp) / name, output / name)
    tokenizer = model.encoder.preprocessor.tokenizer
    described: dict[str, Any] = {}
    for name, (graph, output_names) in _graphs(model, keys).items():
        inputs = examples[name]
        path = output / f"{name}.onnx"
        with torch.no_grad():
            expected = graph(*inputs.values())
            program = torch.onnx.export(
                graph, tuple(inputs.values()), dynamic_shapes=tuple(dims[name].get(k, {}) for k in inputs),
                input_names=list(inputs), output_names=output_names, dynamo=True, verbose=False,
            )  # fmt: skip
        external = _weight_bytes(program) > EXTERNAL_DATA_BYTES
        program.save(str(path), external_data=external)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(output_names, {k: v.numpy() for k, v in inputs.items()})
        expected = expected if isinstance(expected, tuple) else (expected,)
        for out_name, ours, theirs in zip(output_names, expected, got, strict=True):
            error = float(np.abs(ours.numpy() - theirs).max()) if ours.numel() else 0.0
            if error > PARITY_ATOL:
                raise RuntimeError(
                    f"{path.name}: {out_name} differs from PyTorch by {error:.2e} in onnxruntime"
                )
        described[name] = {
            "file": path.name,
            "external_data": external,
            "inputs": [_tensor_info(i) for i in session.get_inputs()],
            "outputs": [_tensor_info(o) for o in session.get_outputs()],
        }
    manifest = {
        "format": FORMAT,
        "encoder": encoder,
        "backend": backend,
        "family": model.backend.info.family,
        "feature_keys": keys,
        "presence": model.has_presence,
        "max_points": getattr(model.backend, "max_points", None),
        "preprocessing": {
            "encoder": dataclasses.asdict(model.encoder.preprocessor.image),
            "backend": dataclasses.asdict(model.backend.info.image),
        },
        "tokenizer": {"files": tokenizer_files, "max_length": tokenizer.max_length},
        "graphs": described,
    }  # fmt: skip
    (output / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return output


def _tensor_info(value: Any) -> dict[str, Any]:
    return {
        "name": value.name,
        "type": value.type,
        "shape": [d if isinstance(d, int) else str(d) for d in value.shape],
    }


__all__ = ["FORMAT", "MANIFEST", "export_onnx"]
