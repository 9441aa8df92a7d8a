"""``evf annotate-objects365``: SAM masks for Objects365 boxes, sharded and resumable.

    evf annotate-objects365 zhiyuan_objv2_train.json /work/o365_sam.json --image_root /data/Objects365/train \
        --backend sam_vit_h --checkpoint sam_vit_h_4b8939.pth --shard 0 --num_shards 8   # e.g. one per GPU
    evf annotate-objects365 zhiyuan_objv2_train.json /work/o365_sam.json --num_shards 8 --merge true

Shard ``i`` of ``n`` takes every ``n``-th image of the id-sorted image list, starting at ``i``. Each
image is encoded once, then every kept ground-truth box is a box prompt (no text); the mask is
the backend's single-mask output. One JSON line per finished image is appended to
``<output>.shard-<i>-of-<n>.jsonl`` (after a header line naming the backend), so a killed job
resumes where it stopped: a rerun skips the images already there and drops a line cut short by
the crash. ``--merge true`` checks that every image is done and writes ``output``: the input json with an
RLE ``segmentation`` and the predicted IoU ``score`` added to each annotated box. With
``--num_shards 1`` the merge runs at the end of the shard.

By default only boxes whose category occurs once in the image are annotated (``unique_only``):
the others are never used for training (see `evf.datamodules.objects365`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from tqdm import tqdm

from evf.datamodules.coco import image_size, index_coco, load_json
from evf.datamodules.common import DataError, read_image
from evf.datamodules.objects365 import unique_annotations
from evf.sam_backends import SamBackend, create_backend

log = logging.getLogger(__name__)


def progress_path(output: Path, shard: int, num_shards: int) -> Path:
    """The append-only progress file of one shard, next to ``output``."""
    return output.with_name(f"{output.name}.shard-{shard}-of-{num_shards}.jsonl")


def shard_image_ids(image_ids: list[int], shard: int, num_shards: int) -> list[int]:
    """The images of shard ``shard``: every ``num_shards``-th of the sorted ids, from ``shard``."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, {num_shards}), got {shard}")
    return sorted(image_ids)[shard::num_shards]


def read_progress(path: Path) -> tuple[dict | None, dict[int, list[dict]]]:
    """The header and the finished images (id -> mask records) of a progress file.

    A last line without its newline was cut short by a crash: it is removed from the file, so
    appends continue on a clean line.
    """
    if not path.is_file():
        return None, {}
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        log.warning(
            "%s: dropping an incomplete last line (%d bytes) left by an interrupted run",
            path,
            len(data) - len(complete),
        )
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    lines = [json.loads(line) for line in complete.decode("utf-8").splitlines() if line]
    if not lines or "header" not in lines[0]:
        raise DataError(f"{path}: not a progress file of evf annotate-objects365 (no header line)")
    return lines[0]["header"], {line["image_id"]: line["masks"] for line in lines[1:]}


def rle_record(mask: np.ndarray) -> dict:
    """A bool ``[H,W]`` mask as a COCO compressed RLE with a text ``counts``."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


@torch.inference_mode()
def segment_boxes(
    backend: SamBackend, images: list[np.ndarray], boxes: list[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Box-prompted masks.

    Args:
        backend: a SAM backend (its image encoder runs once per image).
        images: uint8 ``[H,W,3]`` RGB images.
        boxes: per image, ``[n,4]`` boxes (x0, y0, x1, y1) in its pixel coordinates (``n`` >= 1).

    Returns:
        Per image, bool masks ``[n,H,W]`` and predicted IoUs ``[n]``.
    """
    device = next(backend.parameters()).device
    spec = backend.info.image
    features = backend.encode_image(torch.stack([spec(image) for image in images]).to(device))
    sizes = [image.shape[:2] for image in images]
    frames = [
        spec.transform_coords(torch.as_tensor(b, dtype=torch.float32).view(-1, 2, 2), s).view(-1, 4)
        for b, s in zip(boxes, sizes, strict=True)
    ]
    image_index = torch.cat([torch.full((len(b),), i, dtype=torch.long) for i, b in enumerate(boxes)]).to(
        device
    )
    out = backend.decode(features, image_index, text_tokens=None, boxes=torch.cat(frames).to(device))
    results = []
    for i, size in enumerate(sizes):
        rows = image_index == i
        logits = backend.postprocess(out.logits[rows].float(), spec.resized_size(*size), size)
        results.append(((logits > 0).cpu().numpy(), out.iou[rows, 0].float().cpu().numpy()))
    return results


def _xyxy(ann: dict) -> list[float]:
    x, y, w, h = (float(v) for v in ann["bbox"])
    return [x, y, x + w, y + h]


def annotate(
    annotations: Path, image_root: Path, output: Path, backend: str, checkpoint: Path | None,
    shard: int, num_shards: int, batch_size: int, unique_only: bool, device: str,
) -> None:  # fmt: skip
    """Runs one shard (see the module docstring); returns when all its images are done."""
    coco = index_coco(
        load_json(annotations, "Objects365 annotations"),
        annotations,
        lambda msg: log.warning("skipping: %s", msg),
    )
    header = {
        "annotations": str(annotations),
        "backend": backend,
        "checkpoint": str(checkpoint),
        "unique_only": unique_only,
    }
    path = progress_path(output, shard, num_shards)
    previous, done = read_progress(path)
    if previous is not None and previous != header:
        raise DataError(
            f"{path} was started with {previous}, not {header}: finish it with the same settings or delete it"
        )
    todo = [i for i in shard_image_ids(list(coco.images), shard, num_shards) if i not in done]
    log.info("shard %d/%d: %d images done, %d to go", shard, num_shards, len(done), len(todo))
    if not todo:
        return
    model = create_backend(backend, checkpoint=checkpoint).to(device).eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(path, "a", encoding="utf-8") as log_file,
        tqdm(total=len(todo) + len(done), initial=len(done), unit="img") as bar,
    ):
        if previous is None:
            log_file.write(json.dumps({"header": header}) + "\n")
        for start in range(0, len(todo), batch_size):
            batch = [coco.images[i] for i in todo[start : start + batch_size]]
            anns = [
                unique_annotations(coco.by_image.get(img["id"], []))
                if unique_only
                else coco.by_image.get(img["id"], [])
                for img in batch
            ]
            work = [(img, a) for img, a in zip(batch, anns, strict=True) if a]
            pictures = [
                read_image(
                    image_root / img["file_name"], image_size(coco, img), coco.where("images", img["id"])
                )
                for img, _ in work
            ]
            results = (
                segment_boxes(model, pictures, [np.array([_xyxy(a) for a in a_list]) for _, a_list in work])
                if work
                else []
            )
            masks_of = {img["id"]: [{"id": a["id"], "segmentation": rle_record(m), "score": float(s)}
                                    for a, m, s in zip(a_list, *result, strict=True)]
                        for (img, a_list), result in zip(work, results, strict=True)}  # fmt: skip
            for img in batch:
                log_file.write(
                    json.dumps({"image_id": img["id"], "masks": masks_of.get(img["id"], [])}) + "\n"
                )
            log_file.flush()
            os.fsync(log_file.fileno())
            bar.update(len(batch))


def merge_shards(annotations: Path, output: Path, num_shards: int) -> None:
    """Writes ``output`` from the finished shards; an unfinished shard is an error naming it."""
    data = load_json(annotations, "Objects365 annotations")
    coco = index_coco(data, annotations, lambda msg: None)
    masks: dict[int, dict] = {}
    headers = []
    for shard in range(num_shards):
        path = progress_path(output, shard, num_shards)
        header, done = read_progress(path)
        missing = [i for i in shard_image_ids(list(coco.images), shard, num_shards) if i not in done]
        if header is None or missing:
            raise DataError(
                f"shard {shard} of {num_shards} is not finished ({len(missing)} images to go in {path}): "
                "run it first"
            )
        headers.append(header)
        masks.update({record["id"]: record for records in done.values() for record in records})
    if any(h != headers[0] for h in headers):
        raise DataError(f"the shards of {output} were made with different settings: {headers}")
    for ann in data["annotations"]:
        if ann["id"] in masks:
            ann["segmentation"], ann["score"] = masks[ann["id"]]["segmentation"], masks[ann["id"]]["score"]
    data["evf_annotation"] = headers[0]
    partial = output.with_name(output.name + ".partial")
    partial.write_text(json.dumps(data), encoding="utf-8")
    partial.replace(output)
    log.info("wrote %s: %d of %d boxes with masks", output, len(masks), len(data["annotations"]))


def main(
    annotations: Path,
    output: Path,
    image_root: Path | None = None,
    backend: str = "sam_vit_h",
    checkpoint: Path | None = None,
    shard: int = 0,
    num_shards: int = 1,
    batch_size: int = 8,
    unique_only: bool = True,
    device: str | None = None,
    merge: bool = False,
) -> None:
    """Annotate Objects365 boxes with SAM masks (box prompts), sharded and resumable.

    Args:
        annotations: Objects365 COCO-style json with boxes.
        output: the json to write (masks as RLE); shard progress files go next to it.
        image_root: folder the json's ``file_name`` entries are relative to.
        backend: registered SAM backend name (``sam_vit_h``, ``sam_tiny``, ...).
        checkpoint: the backend's weights (None = random init, for tests only).
        shard: which shard this process runs.
        num_shards: how many shards (processes) share the images.
        batch_size: images per image-encoder call.
        unique_only: annotate only boxes whose category occurs once in the image (the ones training uses).
        device: ``cuda``, ``cpu``, ... (None = cuda when available).
        merge: only merge the finished shards into ``output`` (run once all shards are done).
    """
    annotations, output = Path(annotations), Path(output)
    if not merge:
        if image_root is None:
            raise ValueError("--image_root is required to annotate")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        annotate(
            annotations,
            Path(image_root),
            output,
            backend,
            checkpoint,
            shard,
            num_shards,
            batch_size,
            unique_only,
            device,
        )
        if num_shards > 1:
            return
    merge_shards(annotations, output, num_shards)
