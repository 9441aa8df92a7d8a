"""``evf serve``: an HTTP JSON API on LitServe over a run, a release or an ONNX export.

* ``POST /images`` ``{"image": "<base64 PNG/JPEG>"}`` -> ``{"image_id", "width", "height", "cached"}``:
  the image is encoded once; its state stays in a size-bounded cache keyed by its pixels' hash.
* ``POST /segment`` ``{"image_id" | "image", "prompts": [{"text", "points", "point_labels", "box"}],
  "threshold"}`` -> ``{"image_id", "width", "height", "masks": [{..prompt.., "rle", "area", "score",
  "presence"}]}``: masks as COCO RLE (original-image pixels), requests batched across clients.
* ``GET /health``: 200 ``ok`` once every worker has its model.

Bad input is a 4xx whose JSON names the field (`evf.serve.schema`; a body over ``max_body_mb`` is a
413) and the server goes on. It binds 127.0.0.1 unless ``--host`` says otherwise. docs/deploy.md.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from evf.errors import UsageError
from evf.serve.api import ImagesAPI, ModelSource, SegmentAPI
from evf.serve.cache import FeatureCache
from evf.serve.schema import Limits, Settings, configure


def build_server(
    source: ModelSource,
    cache_dir: Path,
    cache_entries: int = 64,
    limits: Limits | None = None,
    max_batch_size: int = 8,
    batch_timeout: float = 0.005,
    max_body_mb: float = 32.0,
    presence_threshold: float = 0.5,
    workers: int = 1,
):
    """The `litserve.LitServer` of ``evf serve`` (validators configured in this process)."""
    import litserve as ls

    configure(Settings(limits or Limits(), FeatureCache(cache_dir, cache_entries)))
    images = ImagesAPI(source, cache_dir, cache_entries, presence_threshold)
    segment = SegmentAPI(source, cache_dir, cache_entries, presence_threshold, max_batch_size, batch_timeout)
    server = ls.LitServer(
        [images, segment],
        accelerator="cpu",
        devices=1,
        workers_per_device=workers,
        timeout=120,
        max_payload_size=int(max_body_mb * 1024 * 1024),
    )
    server.app.add_exception_handler(RequestValidationError, _validation_error)
    return server


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 without its ``input`` and ``ctx``: they repeat the request, inline image included
    (megabytes of base64 sent back for one wrong box)."""
    detail = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in error.errors()]
    return JSONResponse(status_code=422, content={"detail": detail})


def serve(
    *,
    ckpt_path: Path | None = None,
    pretrained: Path | None = None,
    onnx: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    precision: Literal["fp32", "bf16"] = "fp32",
    max_batch_size: int = 8,
    batch_timeout: float = 0.005,
    cache_entries: int = 64,
    cache_dir: Path | None = None,
    max_image_side: int = 4096,
    max_prompts: int = 16,
    max_text_chars: int = 500,
    max_body_mb: float = 32.0,
    presence_threshold: float = 0.5,
    workers: int = 1,
) -> None:
    """Serve a model over HTTP (LitServe; ``evf[deploy]``).

    Args:
        ckpt_path: a training run's checkpoint; or
        pretrained: a released or exported EVF-SAM directory; or
        onnx: an ``evf export --format onnx`` directory (ONNX Runtime underneath).
        host: the address to bind (default loopback only).
        port: the port.
        precision: ``bf16`` runs PyTorch under CPU autocast (not with ``onnx``).
        max_batch_size: ``/segment`` requests decoded together, across clients.
        batch_timeout: seconds a batch that already holds two or more requests may wait to fill; a
            lone request never waits (`evf.serve.batching`).
        cache_entries: encoded images kept (least recently used go first).
        cache_dir: where they are kept (default: a temporary folder, removed at exit).
        max_image_side: largest image side accepted, in pixels.
        max_prompts: prompts per request.
        max_text_chars: characters per text prompt.
        max_body_mb: largest request body (413 above it).
        presence_threshold: for a model with a presence head, below it a mask comes back empty.
        workers: inference workers per endpoint.
    """
    if sum(x is not None for x in (ckpt_path, pretrained, onnx)) != 1:
        raise UsageError("give exactly one of --ckpt_path RUN.ckpt, --pretrained DIR and --onnx DIR")
    for flag, path in (("--ckpt_path", ckpt_path), ("--pretrained", pretrained), ("--onnx", onnx)):
        if path is not None and not Path(path).exists():
            raise UsageError(f"{flag} {path}: no such file or directory")
    if onnx is not None and precision != "fp32":
        raise UsageError("--precision bf16 runs PyTorch; an ONNX export runs in fp32")
    limits = Limits(max_image_side, max_prompts, max_text_chars)
    source = ModelSource(ckpt_path, pretrained, onnx, precision)
    with tempfile.TemporaryDirectory(prefix="evf-serve-") as tmp:
        server = build_server(
            source, Path(cache_dir or tmp), cache_entries, limits, max_batch_size, batch_timeout,
            max_body_mb, presence_threshold, workers,
        )  # fmt: skip
        print(f"evf serve: http://{host}:{port} (POST /images, POST /segment, GET /health)", flush=True)
        # One API server: with several in threads (LitServe's default is one per inference worker,
        # here two), litserve 0.2.19 sends every response to the queue of the last one started,
        # whose thread then sets an asyncio.Event of another thread's loop; that loop noticed only
        # at uvicorn's 0.1 s tick, so a keep-alive connection accepted by the other server waited
        # ~70 ms per request (benchmarks/serve.md, "The ~70 ms plateau"). One event loop serves
        # every connection of a 2-worker server without a second thread.
        server.run(
            host=host, port=port, generate_client_file=False, api_server_worker_type="thread",
            num_api_servers=1,
        )  # fmt: skip


__all__ = ["build_server", "serve"]
