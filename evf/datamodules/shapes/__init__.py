"""The synthetic "shapes" referring-segmentation dataset, EVF's embedded default.

Scenes of 3–5 flat-coloured circles, squares and triangles on a textured background, each object
with every unambiguous expression of five kinds (colour, shape, colour_shape, position, size).
Learnable by a tiny model on CPU in minutes, yet the expressions need real grounding.

* ``scene``: deterministic scene generation and rendering (``generate_scene``, ``Scene``).
* ``expressions``: the templates and the unambiguity rules (``describe``, ``expression_corpus``).
* ``dataset``: ``ShapesDataset``, returning ``Sample`` records.
* ``refer_writer``: ``write_refer``, the dataset in RefCOCO's REFER layout.
* ``clip``: a moving-shapes clip for video (``generate_clip``, ``write_clip``).
* ``tokenizer``: ``train_shapes_tokenizer``, which builds ``evf/assets/shapes_tokenizer.model``.

Command line: ``python -m evf.datamodules.shapes --write-refer DIR [--train N --val N --test N]``
and ``python -m evf.datamodules.shapes --write-tokenizer PATH``.
"""

from .clip import ShapesClip, generate_clip, write_clip
from .dataset import ShapesDataset
from .expressions import COLOURS, KINDS, SHAPES, Expression, describe, expression_corpus
from .refer_writer import write_refer
from .scene import SPLITS, Scene, ShapeObject, generate_scene
from .tokenizer import SEMANTIC_PREFIX, train_shapes_tokenizer

__all__ = [
    "COLOURS",
    "KINDS",
    "SEMANTIC_PREFIX",
    "SHAPES",
    "SPLITS",
    "Expression",
    "Scene",
    "ShapesClip",
    "ShapeObject",
    "ShapesDataset",
    "describe",
    "expression_corpus",
    "generate_clip",
    "generate_scene",
    "train_shapes_tokenizer",
    "write_clip",
    "write_refer",
]
