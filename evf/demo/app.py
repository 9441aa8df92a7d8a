"""The Gradio page of ``evf demo`` (`build_app`).

Upload an image (it is encoded once, right away); type expressions (one per line, optionally
``[semantic]``); click points (foreground / background) or two box corners on the image, or type
them; press Segment. Each mask is drawn in its own colour, listed with its prompt, predicted IoU,
presence and area, and offered for download as a PNG beside ``predictions.json`` (COCO RLE, the
file ``evf predict`` writes). The page shows the encoder and decoder times.

Bad input (a file that is not an image, nothing to segment, an over-long expression, a point or box
outside the image) is answered with a message on the page -- a toast and the status line -- while
the click canvas keeps its image and the outputs keep the last good result (`gr.skip`); the server
goes on. API callers get the message as an error (`gr.Error`, ``AppError`` in ``gradio_client``).

API (``gradio_client``): ``/encode`` (image file), ``/segment`` (image file, expressions,
semantic, points, box) -> overlay, legend HTML, timing, download files, prompt canvas.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

import gradio as gr
import torch

from evf.demo.drawing import legend_html, masks_overlay, prompt_marks, timing_text
from evf.demo.session import DemoInputError, DemoSession, drawn_geometry
from evf.model import EVFSAM

CLICK_MODES = {"foreground point": "foreground", "background point": "background", "box corner": "box"}
ABOUT = (
    "Upload an image, type one expression per line (tick **[semantic]** for class-level masks), "
    "optionally click points or two box corners on the image, then press **Segment**. The image is "
    "encoded once per upload; a new prompt on it costs decoder time only."
)


def _answering(fn: Callable[..., Any]) -> Callable[..., Any]:
    """For API callers: a `DemoInputError` is an error message (no traceback, on the page or the console)."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DemoInputError as err:
            raise gr.Error(str(err), title="Cannot segment", print_exception=False) from None

    return wrapper


def _on_the_page(fn: Callable[..., Any], outputs: int, status: int | None = None) -> Callable[..., Any]:
    """For the page: a `DemoInputError` is a toast (and, at output ``status``, the status line);
    every other output keeps what it shows, so the canvas keeps its image and the last good masks
    stay (a `gr.Error` would mark every output as failed and blank the canvas)."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DemoInputError as err:
            gr.Warning(str(err), title="Cannot segment")
            kept: list[Any] = [gr.skip()] * outputs
            if status is not None:
                kept[status] = f"**{err}**"
            return tuple(kept)

    return wrapper


def build_app(
    model: EVFSAM, title: str = "EVF-SAM demo", threshold: float = 0.0, dtype: torch.dtype | None = None
) -> gr.Blocks:
    """The demo page around ``model`` (put in eval mode; shared by every visitor, each with their
    own `DemoSession` in a `gr.State`); ``dtype``: autocast compute dtype (`evf.Predictor`)."""
    model.eval()

    def session_of(session: DemoSession | None) -> DemoSession:
        return session if session is not None else DemoSession(model, threshold, dtype)

    def canvas(session: DemoSession, points: str, box: str):
        return prompt_marks(session.image, *drawn_geometry(points, box), session.pending_corner)

    def encode(session, path):
        """Encode an upload. A file that is not an image is named in a warning and taken off the
        upload field (so that another can be uploaded); the session, the canvas and the last masks
        keep the previous image, which Segment then uses."""
        session = session_of(session)
        try:
            session.load(path)
        except DemoInputError as err:
            gr.Warning(str(err), title="Not an image")
            kept = gr.skip()
            return session, None, kept, kept, kept, kept, kept, f"**{err}**", kept
        h, w = session.image.shape[:2]
        status = f"**encode** {session.encode_ms:.0f} ms ({w}x{h} image)"
        return session, path, session.image, "", "", None, "", status, None

    def segment(session, path, expressions, semantic, points, box):
        session = session_of(session)
        encoded_now = session.load(path, keep_current=True)
        result = session.segment(session.prompts(expressions, semantic, points, box), encoded_now)
        shown = masks_overlay(session.image, result.prediction.masks.numpy())
        shown = prompt_marks(shown, *drawn_geometry(points, box))
        files = [str(f) for f in result.files]
        return session, shown, legend_html(result), timing_text(result), files, canvas(session, points, box)

    def click(session, mode, points, box, evt: gr.SelectData):
        if session is None or session.image is None:
            raise DemoInputError("upload an image first")
        x, y = (int(v) for v in evt.index)
        points, box = session.click(x, y, CLICK_MODES[mode], points or "", box or "")
        return session, points, box, canvas(session, points, box)

    def clear(session):
        if session is None or session.image is None:
            return session, "", "", None
        session.pending_corner = None
        return session, "", "", session.image

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        state = gr.State(None)
        gr.Markdown(f"# {title}\n{ABOUT}")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="evf-upload")
                shown_prompts = gr.Image(
                    label="Click on the image to add points or box corners",
                    interactive=False,
                    format="png",
                    elem_id="evf-canvas",
                )
                mode = gr.Radio(list(CLICK_MODES), value="foreground point", label="A click adds a")
                points = gr.Textbox(
                    label="Points: x,y,label per line (label 1 foreground, 0 background)",
                    lines=2,
                    elem_id="evf-points",
                )
                box = gr.Textbox(label="Box: x0,y0,x1,y1 (two clicks in box mode fill it)", elem_id="evf-box")
                clear_button = gr.Button("Clear points and box")
            with gr.Column():
                expressions = gr.Textbox(
                    label="Expressions, one per line",
                    lines=3,
                    placeholder="the dog on the left",
                    elem_id="evf-text",
                )
                semantic = gr.Checkbox(label='[semantic]: class-level masks (puts "[semantic] " before each)')
                run = gr.Button("Segment", variant="primary", elem_id="evf-segment")
                shown_masks = gr.Image(label="Masks", interactive=False, format="png", elem_id="evf-overlay")
                legend = gr.HTML(elem_id="evf-legend")
                timing = gr.Markdown(elem_id="evf-timing")
                downloads = gr.File(
                    label="Downloads: mask PNGs and predictions.json (COCO RLE)",
                    file_count="multiple",
                    interactive=False,
                    elem_id="evf-downloads",
                )
        # The model runs one request at a time (CPU inference gains nothing from interleaving).
        model_queue = {"concurrency_limit": 1, "concurrency_id": "model"}
        upload.upload(
            encode,
            [state, upload],
            [state, upload, shown_prompts, points, box, shown_masks, legend, timing, downloads],
            api_name="encode",
            **model_queue,
        )
        segment_outputs = [state, shown_masks, legend, timing, downloads, shown_prompts]
        run.click(
            _on_the_page(segment, len(segment_outputs), status=segment_outputs.index(timing)),
            [state, upload, expressions, semantic, points, box],
            segment_outputs,
            api_name=False,  # the page's; /segment is the API's below
            **model_queue,
        )
        # The API's /segment: the same function, its bad input an error for the caller.
        gr.Button(visible=False).click(
            _answering(segment),
            [state, upload, expressions, semantic, points, box],
            segment_outputs,
            api_name="segment",
            **model_queue,
        )
        click_outputs = [state, points, box, shown_prompts]
        shown_prompts.select(
            _on_the_page(click, len(click_outputs)),
            [state, mode, points, box],
            click_outputs,
            api_visibility="private",
        )
        clear_button.click(clear, [state], [state, points, box, shown_prompts], api_visibility="private")
    return app


__all__ = ["CLICK_MODES", "build_app"]
