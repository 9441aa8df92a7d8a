import numpy as np
import pytest
import torch

import evf
from evf.model import trainable_summary
from tests.helpers import segment


def _low_res(model, batch, input_ids, attention_mask, image_index):
    """Low-res logits through the model's parts in `evf.decode`'s order."""
    features = model.encode_images(batch.sam_pixels)
    tokens = model.prompt_tokens(batch.encoder_pixels, input_ids, attention_mask, image_index)
    return model.backend.decode(features, image_index, tokens).logits


def _run(model, batch, rows=None):
    """Low-res logits for the batch, or for a subset of its expressions (rows)."""
    rows = torch.arange(len(batch.texts)) if rows is None else rows
    return _low_res(model, batch, batch.input_ids[rows], batch.attention_mask[rows], batch.image_index[rows])


def test_multi_expression_batch_equals_one_by_one(tiny_model, shapes_batch):
    model = tiny_model.eval()
    with torch.no_grad():
        together = _run(model, shapes_batch)
        for n in range(len(shapes_batch.texts)):
            length = int(shapes_batch.attention_mask[n].sum())
            single = _low_res(
                model,
                shapes_batch,
                shapes_batch.input_ids[n : n + 1, :length],  # no padding at all
                shapes_batch.attention_mask[n : n + 1, :length],
                shapes_batch.image_index[n : n + 1],
            )
            torch.testing.assert_close(together[n : n + 1], single, atol=1e-4, rtol=1e-4)


def test_image_encoder_runs_once_per_image(tiny_model, shapes_batch):
    calls = []
    tiny_model.backend.image_encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    _run(tiny_model, shapes_batch)
    assert calls == [len(shapes_batch.original_sizes)]
    assert len(shapes_batch.texts) > len(shapes_batch.original_sizes)


def test_frozen_parts_get_no_grad_and_stay_in_eval(shapes_batch):
    model = evf.create_model("beit3_tiny", "sam_tiny", trainable={"encoder": False, "image_encoder": False})
    model.train()
    assert not model.encoder.training and not model.backend.image_encoder.training
    assert model.backend.mask_decoder.training
    _run(model, shapes_batch).sum().backward()
    parts = model.parts()
    assert all(p.grad is None for p in parts["encoder"].parameters())
    assert all(p.grad is None for p in parts["image_encoder"].parameters())
    assert all(p.grad is not None for p in parts["projector"].parameters())
    summary = trainable_summary(model)
    assert summary["encoder"]["trainable"] == 0 and summary["encoder"]["frozen"] > 0


def test_predict_returns_logits_and_masks_at_original_resolution(tiny_model):
    image = np.random.default_rng(0).integers(0, 256, (97, 131, 3), dtype=np.uint8)
    result = segment(tiny_model.eval(), image, ["the red circle", "the square on the left"])
    assert result.logits.shape == (2, 97, 131) and result.logits.dtype == torch.float32
    assert result.masks.dtype == torch.bool and torch.equal(result.masks, result.logits > 0)
    assert result.scores.shape == (2,)


def test_predict_rejects_bad_input(tiny_model):
    with pytest.raises(ValueError, match="uint8"):
        segment(tiny_model, np.zeros((10, 10), dtype=np.float32), ["x"])
    with pytest.raises(ValueError, match="at least one prompt"):
        segment(tiny_model, np.zeros((10, 10, 3), dtype=np.uint8), [])


def test_create_model_accepts_built_parts():
    encoder = evf.create_encoder("beit3_tiny")
    backend = evf.create_backend("sam_tiny")
    model = evf.create_model(encoder=encoder, backend=backend)
    assert model.encoder is encoder and model.backend is backend
    assert model.projector[0].in_features == encoder.feature_dim
    assert model.projector[-1].out_features == backend.prompt_dim


def test_point_prompts_alone_match_sam_predictor(tiny_model):
    from segment_anything import SamPredictor

    model = tiny_model.eval()
    image = np.random.default_rng(1).integers(0, 256, (90, 140, 3), dtype=np.uint8)
    points = np.array([[40.0, 30.0], [100.0, 60.0]])
    labels = np.array([1, 0])
    result = segment(model, image, None, points=[points], point_labels=[labels])
    predictor = SamPredictor(model.backend.sam)
    predictor.set_image(image)
    reference, _, _ = predictor.predict(points, labels, multimask_output=False, return_logits=True)
    torch.testing.assert_close(result.logits.numpy(), reference, atol=1e-4, rtol=0)


def test_text_with_ragged_points_and_boxes(tiny_model):
    model = tiny_model.eval()
    image = np.random.default_rng(2).integers(0, 256, (90, 140, 3), dtype=np.uint8)
    prompts = ["the red circle", "the square on the left"]
    points = [np.array([[10.0, 20.0]]), np.array([[30.0, 40.0], [50.0, 60.0]])]
    boxes = np.array([[0, 0, 70, 45], [60, 10, 139, 89]], dtype=np.float32)
    with_extra = segment(model, image, prompts, points=points, boxes=boxes)
    text_only = segment(model, image, prompts)
    assert with_extra.logits.shape == (2, 90, 140)
    assert not torch.allclose(with_extra.logits, text_only.logits)  # the extra prompts are used
    # Each prompt decodes exactly as alone: no padding between prompts of different point counts.
    for k in range(2):
        alone = segment(model, image, prompts[k : k + 1], points=points[k : k + 1], boxes=boxes[k : k + 1])
        torch.testing.assert_close(alone.logits[0], with_extra.logits[k], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="one entry per prompt"):
        segment(model, image, prompts, boxes=boxes[:1])
