"""The sentencepiece tokenizer of the shapes vocabulary, shipped as ``evf.assets.SHAPES_TOKENIZER``.

A unigram model trained on every expression the generator can produce, each of their words on a
line of its own, and the ``[semantic]`` prefix other datasets put before class names. (The unigram
trainer seeds its pieces from maximal repeated substrings; in templated text a word that is always
followed by a space is not one, so without the word lines "the" would end up as "▁t h e".) The
text is ASCII, so no normaliser is stored, which keeps the model under a kilobyte. Training is
deterministic (fixed corpus order, one thread, no shuffling, fixed random seed), so rebuilding
reproduces the shipped file.

`write_shapes_wordpiece` writes the BERT WordPiece vocabulary (``vocab.txt``) of the same language
for the tiny ViLT: BERT's special tokens, every word of the expressions and of the captions
(`evf.datamodules.shapes.captions`) whole, and the letters, so any other lower-case word is spelt.

The tiny BEIT-3 reads it through an XLM-R style tokenizer that adds ``<s> <pad> </s> <unk>`` and
``<mask>`` around the sentencepiece ids, so ``pieces + 2`` must stay within its 512 ids.
"""

from __future__ import annotations

import io
from pathlib import Path

import sentencepiece as spm

from .captions import CAPTION_WORDS
from .expressions import expression_corpus

SEMANTIC_PREFIX = "[semantic]"
WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_PIECES = 200  # a soft limit: the trainer stops earlier when the corpus allows no more pieces
_TRAINER_SEED = 0


def train_shapes_tokenizer(path: Path) -> int:
    """Trains the shapes tokenizer and writes the sentencepiece model to ``path``.

    Args:
        path: output ``.model`` file; its folder must exist.

    Returns:
        The number of pieces in the model.
    """
    expressions = expression_corpus()
    words = sorted({word for text in expressions for word in text.split()})
    spm.set_random_generator_seed(_TRAINER_SEED)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([*expressions, *words, SEMANTIC_PREFIX]),
        model_writer=model,
        model_type="unigram",
        vocab_size=MAX_PIECES,
        hard_vocab_limit=False,
        character_coverage=1.0,
        normalization_rule_name="identity",
        user_defined_symbols=[SEMANTIC_PREFIX],
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    Path(path).write_bytes(model.getvalue())
    return spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()


def shapes_wordpiece_vocabulary() -> list[str]:
    """The WordPiece vocabulary: specials (``[PAD]`` = 0), whole words, letters, ``##`` letters."""
    words = sorted({w for text in expression_corpus() for w in text.split()} | set(CAPTION_WORDS))
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    singles = [c for c in letters if c not in words]
    return [*WORDPIECE_SPECIALS, *words, *singles, *(f"##{c}" for c in letters)]


def write_shapes_wordpiece(directory: Path) -> Path:
    """Writes ``vocab.txt`` of `shapes_wordpiece_vocabulary` into ``directory``; returns its path."""
    path = Path(directory) / "vocab.txt"
    path.write_text("\n".join(shapes_wordpiece_vocabulary()) + "\n")
    return path
