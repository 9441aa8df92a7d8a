"""Image-caption sources for encoder pretraining: shapes captions, JSONL and COCO captions."""

import json
import re

import numpy as np
import pytest
import sentencepiece as spm
from PIL import Image

from evf.assets import SHAPES_TOKENIZER
from evf.datamodules.captions import CocoCaptions, JsonlCaptions, ShapesCaptions
from evf.datamodules.common import DataError
from evf.datamodules.shapes import ShapesDataset, expression_corpus
from evf.datamodules.shapes.captions import CAPTION_WORDS
from evf.datamodules.shapes.tokenizer import shapes_wordpiece_vocabulary


def _image(path, size=(6, 5)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), 90, np.uint8)).save(path)


def test_shapes_captions_are_seeded_use_their_own_scenes_and_the_tokenizers_vocabulary():
    source = ShapesCaptions(40, seed=0)
    rng = lambda i: np.random.default_rng(i)  # noqa: E731
    captions = [source.pair(i, rng(i))[1] for i in range(40)]
    assert captions == [source.pair(i, rng(i))[1] for i in range(40)]
    assert len(set(captions)) == 40
    words = {w for c in captions for w in c.split()}
    assert words <= set(CAPTION_WORDS) and {"left", "bigger", "red", "circle"} <= words
    expressions = set(expression_corpus())
    assert not any(e in expressions for c in captions for e in c.split(" and "))  # not the task's templates
    task = ShapesDataset("train", 40, seed=0)
    assert not any(np.array_equal(source.scene(i)[0], task.scene(i).image) for i in range(40))
    processor = spm.SentencePieceProcessor(model_file=str(SHAPES_TOKENIZER))
    assert all(processor.unk_id() not in processor.encode(w) for w in CAPTION_WORDS)
    vocabulary = shapes_wordpiece_vocabulary()
    assert set(CAPTION_WORDS) <= set(vocabulary) and len(vocabulary) <= 128  # vilt_tiny's token table


def test_a_jsonl_of_captions_groups_captions_by_image(tmp_path):
    _image(tmp_path / "img" / "a.png")
    _image(tmp_path / "img" / "b.png", (4, 4))
    lines = [{"image": "img/a.png", "caption": "a cat"}, {"image": "img/b.png", "caption": " a dog "},
             {"image": "img/a.png", "caption": "the cat"}]  # fmt: skip
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    source = JsonlCaptions(tmp_path / "c.jsonl")
    assert len(source) == 2
    seen = {source.pair(0, np.random.default_rng(s))[1] for s in range(20)}
    image, caption = source.pair(1, np.random.default_rng(0))
    assert seen == {"a cat", "the cat"} and caption == "a dog" and image.shape == (4, 4, 3)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"image": "missing.png", "caption": "a cat"}', "image file not found"),
        ('{"image": "a.png", "caption": "  "}', "'caption' must be a non-empty string"),
        ('{"image": "a.png", "caption": 3}', "'caption' must be a non-empty string"),
        ('{"image": "a.png"', "not a JSON object"),
        ('{"caption": "a cat"}', "missing field 'image'"),
        ('["a.png", "a cat"]', "expected a JSON object"),
    ],
)
def test_a_bad_jsonl_line_is_refused_naming_the_file_and_line(tmp_path, line, message):
    _image(tmp_path / "a.png")
    path = tmp_path / "c.jsonl"
    path.write_text('{"image": "a.png", "caption": "fine"}\n' + line + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:2: {message}")):
        JsonlCaptions(path)


def test_coco_captions_read_and_refuse_bad_records(tmp_path):
    _image(tmp_path / "images" / "1.jpg")
    annotations = [{"id": 7, "image_id": 1, "caption": "A cat."}, {"id": 8, "image_id": 1, "caption": "x"}]
    data = {"images": [{"id": 1, "file_name": "1.jpg"}], "annotations": annotations}
    path = tmp_path / "captions_train2017.json"
    path.write_text(json.dumps(data))
    source = CocoCaptions(path, tmp_path / "images")
    assert len(source) == 1 and source.pair(0, np.random.default_rng(0))[1] in {"A cat.", "x"}
    data["annotations"][1]["caption"] = ""
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotations\[1\] \(id 8\): 'caption' must be a non-empty string"):
        CocoCaptions(path, tmp_path / "images")
    data["annotations"][1] = {"id": 8, "image_id": 2, "caption": "a dog"}
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="image_id 2 is not in 'images'"):
        CocoCaptions(path, tmp_path / "images")
    data["annotations"].pop()
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="image id 1: image file not found"):
        CocoCaptions(path, tmp_path / "elsewhere")
    path.write_text("{")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:1: not valid JSON"):
        CocoCaptions(path, tmp_path / "images")


def test_an_unreadable_image_names_its_file(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not a png")
    (tmp_path / "c.jsonl").write_text('{"image": "a.png", "caption": "a cat"}\n')
    with pytest.raises(DataError, match="a.png"):
        JsonlCaptions(tmp_path / "c.jsonl").pair(0, np.random.default_rng(0))
