"""`evf.Predictor`: the image encoder runs once per image for any mix of prompts, on every path
(`Predictor`, `evf.predict_images`, ``evf predict``), and each prompt gets what it would get alone."""

import json

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything.modeling import ImageEncoderViT

import evf
from evf.cli import main
from evf.decode import decode
from evf.module import EVFSAMModule
from tests.helpers import segment

MIXED = [
    evf.Prompt("the red circle"),
    evf.Prompt("the blue square", box=(5, 6, 40, 50)),
    evf.Prompt(points=((10, 12), (30, 40)), point_labels=(1, 0)),
    evf.Prompt(box=(0, 0, 20, 30)),
    evf.Prompt("the star", points=((20, 20),)),
    evf.Prompt("the green triangle"),
]


@pytest.fixture
def encoder_calls(monkeypatch):
    """Images through segment-anything's image encoder (every SAM backend), per call."""
    calls: list[int] = []
    forward = ImageEncoderViT.forward

    def counting(self, x):
        calls.append(x.shape[0])
        return forward(self, x)

    monkeypatch.setattr(ImageEncoderViT, "forward", counting)
    return calls


def _image(seed=0, h=60, w=80):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_set_image_encodes_once_for_any_number_of_predict_calls(tiny_model, encoder_calls):
    predictor = evf.Predictor(tiny_model.eval())
    predictor.set_image(_image())
    first = predictor.predict(MIXED)
    again = predictor.predict(MIXED[::-1])
    predictor.predict("the red circle")
    assert encoder_calls == [1]
    torch.testing.assert_close(again.logits, first.logits.flip(0))
    assert first.logits.shape == (len(MIXED), 60, 80) and first.masks.dtype == torch.bool


def test_each_prompt_of_a_mix_equals_its_own_prediction(tiny_model):
    predictor = evf.Predictor(tiny_model.eval())
    predictor.set_image(_image(1))
    together = predictor.predict(MIXED)
    for k, prompt in enumerate(MIXED):
        alone = predictor.predict([prompt])
        torch.testing.assert_close(together.logits[k : k + 1], alone.logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(together.scores[k : k + 1], alone.scores, atol=1e-5, rtol=1e-5)


def test_parallel_arrays_of_model_predict_become_the_same_prompts(tiny_model):
    model = tiny_model.eval()
    image = _image(2)
    predictor = evf.Predictor(model)
    predictor.set_image(image)
    ours = predictor.predict([evf.Prompt("the red circle", points=((10, 12), (30, 40)), point_labels=(1, 0),
                                         box=(5, 6, 40, 50)), evf.Prompt("the square", points=((20, 20),),
                                         box=(0, 0, 20, 30))])  # fmt: skip
    points = [np.array([[10.0, 12.0], [30.0, 40.0]]), np.array([[20.0, 20.0]])]
    theirs = segment(model, image, ["the red circle", "the square"], points=points,
                           point_labels=[np.array([1, 0]), np.array([1])],
                           boxes=np.array([[5, 6, 40, 50], [0, 0, 20, 30]], dtype=np.float32))  # fmt: skip
    torch.testing.assert_close(ours.logits, theirs.logits)
    with pytest.raises(ValueError, match="give its points and box inside it"):
        segment(model, image, [evf.Prompt("x")], boxes=np.zeros((1, 4), dtype=np.float32))


def test_store_rows_as_features_give_the_masks_of_the_image_encoder(tiny_model):
    model = tiny_model.eval()
    image = _image(4)
    predictor = evf.Predictor(model)
    predictor.set_image(image)
    expected = predictor.predict(MIXED)
    rows = {k: v[0].clone() for k, v in predictor._features.items()}  # one image's row, as a store gives
    other = evf.Predictor(model)
    other.set_image(image, features=rows)
    torch.testing.assert_close(other.predict(MIXED).logits, expected.logits)
    with pytest.raises(ValueError, match="expected"):
        other.set_image(image, features={k: v[..., :-1] for k, v in rows.items()})
    with pytest.raises(ValueError, match="keys"):
        other.set_image(image, features={"other": rows["image_embeddings"]})


def test_predict_keeps_no_backend_pixels_and_a_failed_set_image_keeps_the_old_image(tiny_model, monkeypatch):
    model = tiny_model.eval()
    predictor = evf.Predictor(model)
    predictor.set_image(_image(5))
    assert predictor._image.sam_pixels is None  # decoder-time prompts move no full-size pixels
    before = predictor.predict("the red circle").logits

    def failing(pixels):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model, "encode_images", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        predictor.set_image(_image(6, 90, 40))
    torch.testing.assert_close(predictor.predict("the red circle").logits, before)


def test_images_without_prompts_decode_to_no_masks(tiny_model):
    model = tiny_model.eval()
    builder = evf.Predictor(model).builder
    images = builder.images([_image(0), _image(1, 30, 40)])
    batch = builder.text_batch(images, [[], []], ["a", "b"])
    with torch.no_grad():
        predictions = decode(model, batch)
    assert [p.logits.shape for p in predictions] == [(0, 60, 80), (0, 30, 40)]
    mixed = builder.text_batch(images, [[], ["the red circle"]], ["a", "b"])
    with torch.no_grad():
        predictions = decode(model, mixed)
    assert [p.logits.shape for p in predictions] == [(0, 60, 80), (1, 30, 40)]


def test_predict_without_an_image_or_prompts_is_a_clear_error(tiny_model):
    predictor = evf.Predictor(tiny_model.eval())
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict("the red circle")
    predictor.set_image(_image())
    with pytest.raises(ValueError, match="at least one prompt"):
        predictor.predict([])
    predictor.reset_image()
    assert not predictor.is_image_set
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict("the red circle")


def test_given_features_skip_the_image_encoder(tiny_model, encoder_calls):
    model = tiny_model.eval()
    image = _image(3)
    predictor = evf.Predictor(model)
    predictor.set_image(image)
    features = {k: v.clone() for k, v in predictor._features.items()}
    expected = predictor.predict(MIXED)
    other = evf.Predictor(model)
    other.set_image(image, features=features)
    torch.testing.assert_close(other.predict(MIXED).logits, expected.logits)
    assert encoder_calls == [1]


@pytest.fixture
def two_images(tmp_path):
    paths = []
    for seed, (h, w) in enumerate([(60, 80), (70, 50)]):
        paths.append(tmp_path / f"img{seed}.png")
        Image.fromarray(_image(seed, h, w)).save(paths[-1])
    manifest = tmp_path / "manifest.json"
    records = [
        {"text": p.text, "points": [list(x) for x in p.points], "point_labels": list(p.point_labels),
         "box": None if p.box is None else list(p.box)}
        for p in MIXED
    ]  # fmt: skip
    manifest.write_text(json.dumps({p.name: records for p in paths}))
    return paths, manifest


def test_predict_images_encodes_each_image_once_at_any_batch_size(tiny_model, two_images, encoder_calls):
    _, manifest = two_images
    reports = {}
    for batch_size in (1, 2):
        encoder_calls.clear()
        reports[batch_size] = evf.predict_images(
            tiny_model, manifest=manifest, batch_size=batch_size, progress=False
        )
        assert encoder_calls == [batch_size] * (2 // batch_size)
    assert len(reports[1].records) == 2 * len(MIXED)
    for one, two in zip(reports[1].records, reports[2].records, strict=True):
        assert one["rle"] == two["rle"] and abs(one["score"] - two["score"]) < 1e-5


def test_evf_predict_encodes_each_image_once(tmp_path, two_images, encoder_calls):
    _, manifest = two_images
    module = EVFSAMModule("beit3_tiny", "sam_tiny")
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    out = tmp_path / "out"
    main(["predict", f"--ckpt_path={tmp_path / 'm.ckpt'}", f"--manifest={manifest}", f"--output={out}",
          "--batch_size=2", "--trainer.accelerator=cpu", "--trainer.logger=false",
          "--trainer.enable_progress_bar=false"])  # fmt: skip
    assert len(json.loads((tmp_path / "out" / "predictions.json").read_text())) == 2 * len(MIXED)
    assert encoder_calls == [2]


def test_lightning_moves_a_batch_with_its_to_method(shapes_batch, tiny_model):
    from lightning.fabric.utilities.apply_func import move_data_to_device

    moved = move_data_to_device(shapes_batch, torch.device("meta"))
    assert type(moved) is type(shapes_batch) and moved.texts == shapes_batch.texts
    tensors = [moved.sam_pixels, moved.encoder_pixels, moved.input_ids, *moved.masks, moved.groups[0].rows]
    assert all(t.device.type == "meta" for t in tensors)
    assert shapes_batch.sam_pixels.device.type == "cpu"  # a copy: the original stays where it was
    builder = evf.Predictor(tiny_model).builder
    images = builder.images([_image()])
    images.image_features = {"image_embeddings": torch.zeros(1, 64, 16, 16)}
    batch = move_data_to_device(builder.prompt_batch(images, [MIXED], ["a"]), torch.device("meta"))
    geometry = [
        t for g in batch.groups for t in (g.boxes, *(() if g.points is None else g.points.__dict__.values()))
    ]
    assert len([t for t in geometry if t is not None]) >= 4
    assert all(t.device.type == "meta" for t in geometry if t is not None)
    assert batch.image_features["image_embeddings"].device.type == "meta"
