"""``evf serve`` through real HTTP on 127.0.0.1: masks equal `evf.Predictor`'s, every kind of bad
input is a 4xx naming the field and the next request is answered, concurrent clients get their own
answers, and the feature cache is hit for a known image and stays within its bound."""

import base64
import io
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import evf
from evf.tools.export import export_release
from tests.demo.conftest import free_port
from tests.release_helpers import perturb

STARTUP_S = 180  # generous for 2 shared CPU cores, finite so a server that never comes up fails
TIMEOUT_S = 60
CACHE_ENTRIES = 3


def _png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _image(seed: int, shape=(60, 80, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    model = perturb(evf.create_model("beit3_tiny", "sam_tiny"), seed=7).eval()
    return export_release(model, tmp_path_factory.mktemp("release"), "beit3_tiny", "sam_tiny")


@pytest.fixture(scope="module")
def server(release, tmp_path_factory):
    """``evf serve`` in its own process group, bound to loopback; killed with its workers after."""
    port, cache = free_port(), tmp_path_factory.mktemp("cache")
    log_path = tmp_path_factory.mktemp("log") / "serve.log"
    command = [
        sys.executable,
        "-m",
        "evf.cli",
        "serve",
        f"--pretrained={release}",
        f"--port={port}",
        f"--cache_dir={cache}",
        f"--cache_entries={CACHE_ENTRIES}",
        "--max_body_mb=1",
        "--max_prompts=4",
        "--max_batch_size=8",
    ]  # fmt: skip
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"evf serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"evf serve not healthy after {STARTUP_S} s:\n{log_path.read_text()[-3000:]}")
        yield url, cache
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=TIMEOUT_S)


def _decoded(masks: list[dict]) -> np.ndarray:
    return np.stack(
        [mask_utils.decode({"size": m["rle"]["size"], "counts": m["rle"]["counts"]}) > 0 for m in masks]
    )


def _expected(release: Path, image: np.ndarray, prompts: list) -> evf.Prediction:
    predictor = evf.Predictor(evf.load_pretrained(release))
    predictor.set_image(image)
    return predictor.predict(prompts)


PROMPTS = [
    {"text": "the red circle"},
    {"points": [[30, 20], [60, 40]], "point_labels": [1, 0]},
    {"box": [5, 5, 50, 40]},
    {"text": "the blue square", "box": [10, 10, 70, 55]},
]


@pytest.mark.slow
def test_uploaded_and_inline_images_give_the_predictors_masks(server, release):
    url, _ = server
    image = _image(1)
    uploaded = _post(url, "/images", {"image": _png(image)})
    assert uploaded.status_code == 200 and uploaded.json()["cached"] is False
    assert (uploaded.json()["width"], uploaded.json()["height"]) == (80, 60)
    by_id = _post(url, "/segment", {"image_id": uploaded.json()["image_id"], "prompts": PROMPTS}).json()
    inline = _post(url, "/segment", {"image": _png(image), "prompts": PROMPTS}).json()
    prompts = [
        "the red circle",
        evf.Prompt(points=((30, 20), (60, 40)), point_labels=(1, 0)),
        evf.Prompt(box=(5, 5, 50, 40)),
        evf.Prompt("the blue square", box=(10, 10, 70, 55)),
    ]
    expected = _expected(release, image, prompts)
    for answer in (by_id, inline):
        assert [m.get("prompt") for m in answer["masks"]] == ["the red circle", None, None, "the blue square"]
        np.testing.assert_array_equal(_decoded(answer["masks"]), expected.masks.numpy())
        np.testing.assert_allclose([m["score"] for m in answer["masks"]], expected.scores.numpy(), atol=1e-5)
        assert [m["area"] for m in answer["masks"]] == expected.masks.flatten(1).sum(1).tolist()
        assert all(m["presence"] == 1.0 for m in answer["masks"])
    assert httpx.get(f"{url}/health", timeout=TIMEOUT_S).text == "ok"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/images", {"image": base64.b64encode(b"not an image").decode()}, 422, "image: not an image"),
        ("/images", {"image": "%%%"}, 422, "image: not base64"),
        (
            "/segment",
            {"image_id": "0123abcd", "prompts": [{"text": "x"}]},
            422,
            "image_id: '0123abcd' is not",
        ),
        ("/segment", {"image": "IMAGE", "prompts": [{"box": [0, 0, 500, 5]}]}, 422, "prompts[0].box"),
        ("/segment", {"image": "IMAGE", "prompts": [{"points": [[-3, 5]]}]}, 422, "prompts[0].points[0]"),
        ("/segment", {"image": "IMAGE", "prompts": [{"txt": "the cup"}]}, 422, "txt"),
        ("/segment", {"image": "IMAGE", "prompts": [{"text": 3.5}]}, 422, "text"),
        (
            "/segment",
            {"image": "IMAGE", "prompts": [{"text": "x" * 600}]},
            422,
            "prompts[0].text: 600 characters",
        ),
        ("/segment", {"image": "IMAGE", "prompts": [{"text": "a"}] * 5}, 422, "prompts: 5, at most 4"),
        ("/segment", {"image": "IMAGE", "prompts": []}, 422, "prompts: empty"),
        ("/segment", {"prompts": [{"text": "a"}]}, 422, "give either image_id"),
        ("/segment", {"image": "IMAGE", "prompts": [{"text": "a"}], "pad": "x" * 2_000_000}, 413, ""),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field_and_the_server_goes_on(server, path, body, status, message):
    url, _ = server
    image = _png(_image(2))
    body = {k: image if v == "IMAGE" else v for k, v in body.items()}
    answer = _post(url, path, body)
    assert answer.status_code == status, answer.text[:500]
    if message:
        assert message in answer.text and "Traceback" not in answer.text
    if status == 422:  # the message, not the request back (an inline image would come back whole)
        assert image not in answer.text and set(answer.json()["detail"][0]) == {"loc", "msg", "type"}
    good = _post(url, "/segment", {"image": image, "prompts": [{"text": "the cup"}]})
    assert good.status_code == 200 and len(good.json()["masks"]) == 1


@pytest.mark.slow
def test_concurrent_clients_get_their_own_answers(server, release):
    url, _ = server
    images = [_image(10 + k, (50 + 4 * k, 70, 3)) for k in range(8)]
    texts = [f"the {colour} shape" for colour in ("red", "green", "blue", "yellow")] * 2

    def ask(k: int) -> dict:
        return _post(url, "/segment", {"image": _png(images[k]), "prompts": [{"text": texts[k]}]}).json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    for k, answer in enumerate(answers):
        assert (answer["height"], answer["masks"][0]["prompt"]) == (images[k].shape[0], texts[k])
        np.testing.assert_array_equal(
            _decoded(answer["masks"]), _expected(release, images[k], [texts[k]]).masks.numpy()
        )


@pytest.mark.slow
def test_the_feature_cache_is_hit_and_stays_within_its_bound(server):
    url, cache = server
    first = _post(url, "/images", {"image": _png(_image(20))}).json()
    again = _post(url, "/images", {"image": _png(_image(20))}).json()
    assert again == {**first, "cached": True}
    for seed in range(21, 21 + CACHE_ENTRIES + 1):
        assert _post(url, "/images", {"image": _png(_image(seed))}).status_code == 200
        assert len(list(Path(cache).glob("*.npz"))) <= CACHE_ENTRIES
    gone = _post(url, "/segment", {"image_id": first["image_id"], "prompts": [{"text": "a"}]})
    assert gone.status_code == 422 and "no longer" in gone.text


def test_serve_runs_one_api_server_on_loopback(release, tmp_path, monkeypatch):
    """With several API servers in threads (LitServe's default: one per inference worker),
    litserve 0.2.19 answers every request through the last one's queue and another thread's event
    loop, and a keep-alive connection of the first waited ~70 ms per request for uvicorn's tick
    (benchmarks/serve.md). ``evf serve`` runs exactly one, in a thread, bound to loopback."""
    import litserve as ls

    from evf.serve.server import serve

    run_kwargs = {}
    monkeypatch.setattr(ls.LitServer, "run", lambda self, **kwargs: run_kwargs.update(kwargs))
    serve(pretrained=release, cache_dir=tmp_path)
    assert run_kwargs["num_api_servers"] == 1
    assert run_kwargs["api_server_worker_type"] == "thread"
    assert run_kwargs["host"] == "127.0.0.1"
