"""BEIT-3 family: parity with torchscale 0.3.0 through the production unilm remap, strict checkpoint
errors, the tokenizer, every fusion x feature mode, and real sizes on the meta device."""

import logging

import pytest
import sentencepiece as spm
import torch

from evf.checkpoint import CheckpointError, CheckpointFormat, load_strict
from evf.encoders import build_preprocessor, create_encoder
from evf.encoders.beit3 import UNILM_BEIT3, VARIANTS, beit3_rules, build_beit3_tokenizer

# A torchscale-sized toy: 32 px / patch 8 -> 16 patches + CLS; 2 layers of width 64.
SIZES = dict(
    img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, vocab_size=100, max_source_positions=64
)
MODES = [
    ("text", "cls_text"),
    ("late", "concat"),
    ("early", "cls_image"),
    ("early", "cls_text"),
    ("early", "avgpool_image"),
    ("early", "concat"),
]
CORPUS = [
    "the red circle on the left",
    "a small blue square",
    "green triangle at the top right",
    "the big yellow star below the circle",
    "two purple squares",
]


def _torchscale_config(
    img_size, patch_size, embed_dim, depth, num_heads, vocab_size, max_source_positions=1024
):
    from torchscale.architecture.config import EncoderConfig

    # unilm's beit3 config (modeling_utils._get_{base,large}_config)
    return EncoderConfig(
        img_size=img_size,
        patch_size=patch_size,
        vocab_size=vocab_size,
        multiway=True,
        layernorm_embedding=False,
        normalize_output=True,
        no_output_layer=True,
        encoder_embed_dim=embed_dim,
        encoder_attention_heads=num_heads,
        encoder_ffn_embed_dim=4 * embed_dim,
        encoder_layers=depth,
        max_source_positions=max_source_positions,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """torchscale BEiT3 with random weights (LayerNorms included) and its unilm-layout checkpoint."""
    from torchscale.model.BEiT3 import BEiT3

    torch.manual_seed(0)
    model = BEiT3(_torchscale_config(**SIZES)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    state = {"beit3." + k: v for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("unilm") / "beit3_toy.pth"
    torch.save({"model": state}, path)
    return model, state, path


def _batch(seed=0, padded=True):
    """2 images, 3 expressions (image_index 0,1,1); rows 1 and 2 right-padded when ``padded``."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 3, 32, 32, generator=g)
    input_ids = torch.randint(3, SIZES["vocab_size"], (3, 7), generator=g)
    attention_mask = torch.ones(3, 7, dtype=torch.long)
    if padded:
        attention_mask[1, 4:] = 0
        attention_mask[2, 5:] = 0
        input_ids[attention_mask == 0] = 1
    return pixels, input_ids, attention_mask, torch.tensor([0, 1, 1])


def _tiny(**kwargs):
    return create_encoder("beit3_tiny", **SIZES, **kwargs)


@pytest.mark.reference
@pytest.mark.parametrize("padded", [False, True])
def test_joint_pass_matches_torchscale(reference, padded):
    model, _, path = reference
    encoder = _tiny(checkpoint=path, fusion="early", feature="concat").eval()
    pixels, ids, mask, index = _batch(padded=padded)
    with torch.no_grad():
        expected = model(textual_tokens=ids, visual_tokens=pixels[index], text_padding_position=mask == 0)
        tokens = encoder.forward_tokens(pixels, ids, mask, index)
    ours = torch.cat([tokens["vision"], tokens["text"]], dim=1)
    real = torch.cat([torch.ones(3, ours.shape[1] - ids.shape[1], dtype=torch.bool), mask.bool()], dim=1)
    torch.testing.assert_close(ours[real], expected["encoder_out"][real], atol=1e-5, rtol=0)


@pytest.mark.reference
def test_single_modality_passes_match_torchscale(reference):
    model, _, path = reference
    pixels, ids, mask, index = _batch()
    late = _tiny(checkpoint=path, fusion="late", feature="concat").eval()
    text_only = _tiny(checkpoint=path, fusion="text", feature="cls_text").eval()
    with torch.no_grad():
        image_ref = model(visual_tokens=pixels)["encoder_out"]
        text_ref = model(textual_tokens=ids, text_padding_position=mask == 0)["encoder_out"]
        late_tokens = late.forward_tokens(pixels, ids, mask, index)
        text_tokens = text_only.forward_tokens(pixels, ids, mask, index)
    torch.testing.assert_close(late_tokens["vision"], image_ref[index], atol=1e-5, rtol=0)
    for tokens in (late_tokens, text_tokens):
        torch.testing.assert_close(tokens["text"][mask.bool()], text_ref[mask.bool()], atol=1e-5, rtol=0)
    assert text_only.vision_embed is None
    assert not any(".vision." in k for k in text_only.state_dict())


@pytest.mark.reference
def test_pruned_modes_load_the_full_checkpoint(reference):
    """Default early/cls_image builds no text query parts in the last layer and no text final
    norm: its loader drops exactly those tensors and its feature equals the full model's."""
    _, _, path = reference
    full = _tiny(checkpoint=path, feature="concat").eval()
    pruned = _tiny(checkpoint=path).eval()
    assert "blocks.1.mlp.text.fc1.weight" not in pruned.state_dict()
    assert "blocks.1.attn.k.text.weight" in pruned.state_dict()
    with torch.no_grad():
        torch.testing.assert_close(
            pruned(*_batch()), full(*_batch())[:, : SIZES["embed_dim"]], atol=1e-6, rtol=0
        )


@pytest.mark.reference
def test_unknown_key_raises_naming_it(reference, tmp_path):
    _, state, _ = reference
    for extra in ("beit3.encoder.layers.0.self_attn.rel_pos.A.weight", "head.weight"):
        path = tmp_path / "extra.pth"
        torch.save({"model": {**state, extra: torch.zeros(1)}}, path)
        with pytest.raises(CheckpointError, match=extra.replace(".", r"\.")):
            _tiny(checkpoint=path, feature="concat")


@pytest.mark.reference
def test_missing_key_raises_naming_it(reference, tmp_path):
    _, state, _ = reference
    path = tmp_path / "missing.pth"
    torch.save(
        {"model": {k: v for k, v in state.items() if k != "beit3.encoder.layers.1.ffn.B.fc2.bias"}}, path
    )
    with pytest.raises(CheckpointError, match=r"missing 1 key\(s\): blocks\.1\.mlp\.text\.fc2\.bias"):
        _tiny(checkpoint=path, feature="concat")


@pytest.mark.reference
def test_rules_take_the_evf_release_prefix(reference):
    _, state, _ = reference
    release = CheckpointFormat(name="release_prefix", rules=beit3_rules("mm_extractor.beit3."))
    renamed = {"mm_extractor." + k: v for k, v in state.items()}
    assert release.remap(renamed).keys() == UNILM_BEIT3.remap(state).keys()
    with pytest.raises(CheckpointError, match="not known"):
        release.remap(state)  # the unilm prefix alone is not the release layout


@pytest.mark.reference
@pytest.mark.parametrize("variant", ["beit3_base", "beit3_large"])
def test_real_sizes_match_torchscale_on_meta(variant):
    """Names and shapes of every tensor equal torchscale's through the remap; recorded counts."""
    from torchscale.model.BEiT3 import BEiT3

    sizes = dict(VARIANTS[variant])
    with torch.device("meta"):
        reference = BEiT3(_torchscale_config(**sizes))
        ours = create_encoder(variant, feature="concat")
        default = create_encoder(variant)
    state = UNILM_BEIT3.remap({"beit3." + k: v for k, v in reference.state_dict().items()})
    load_strict(ours, state, UNILM_BEIT3, source="torchscale on meta")
    count = {
        name: sum(p.numel() for p in m.parameters())
        for name, m in [("torchscale", reference), ("ours", ours), ("default", default)]
    }
    dim = sizes["embed_dim"]
    assert count["ours"] == count["torchscale"] - dim  # the dropped vision mask_token [1,1,D]
    expected = {
        "beit3_base": (220_987_392, 220_986_624, 215_072_256),
        "beit3_large": (672_702_464, 672_701_440, 662_194_176),
    }[variant]
    assert (count["torchscale"], count["ours"], count["default"]) == expected


@pytest.mark.parametrize(("fusion", "feature"), MODES)
def test_every_mode_trains_every_parameter(fusion, feature):
    encoder = _tiny(fusion=fusion, feature=feature).train()
    out = encoder(*_batch())
    assert out.shape == (3, encoder.feature_dim)
    assert encoder.feature_dim == SIZES["embed_dim"] * (2 if feature == "concat" else 1)
    (out * torch.randn_like(out)).sum().backward()
    unused = [n for n, p in encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not unused


def test_fusion_layers_also_train_every_parameter():
    encoder = create_encoder("beit3_tiny", fusion_layers=2, feature="avgpool_image")  # layers 3, 4 image-only
    assert not any(".text." in k for k in encoder.blocks[2].state_dict())
    out = encoder(
        torch.randn(2, 3, 64, 64),
        torch.randint(3, 40, (3, 5)),
        torch.ones(3, 5, dtype=torch.long),
        torch.tensor([0, 1, 1]),
    )
    (out * torch.randn_like(out)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(fusion="text", feature="cls_image"), "cls_text"),
        (dict(fusion="late", feature="cls_image"), "concat"),
        (dict(fusion="late", feature="concat", fusion_layers=1), "fusion_layers"),
        (dict(fusion_layers=0), "fusion_layers"),
        (dict(fusion_layers=3), "fusion_layers"),
        (dict(feature="cls"), "unknown"),
    ],
)
def test_incompatible_modes_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _tiny(**kwargs)


def test_unknown_override_raises():
    with pytest.raises(TypeError, match="widht"):
        create_encoder("beit3_tiny", widht=3)


@pytest.mark.parametrize("fusion_layers", [1, None])
def test_layers_after_fusion_layers_keep_modalities_apart(fusion_layers):
    """Perturb the text tokens after layer 1 with a hook: image tokens stay the same only when
    the later layers are modality-separate."""
    encoder = _tiny(feature="concat", fusion_layers=fusion_layers).eval()

    def perturb(module, args, output):
        return {**output, "text": output["text"] + 1.0}

    with torch.no_grad():
        clean = encoder.forward_tokens(*_batch())
        handle = encoder.blocks[0].register_forward_hook(perturb)
        changed = encoder.forward_tokens(*_batch())
        handle.remove()
        other_text = encoder.forward_tokens(*_batch(seed=0)[:1], *_batch(seed=1)[1:])
    assert not torch.allclose(changed["text"], clean["text"])
    assert torch.equal(changed["vision"], clean["vision"]) == (fusion_layers == 1)
    assert not torch.allclose(other_text["vision"], clean["vision"])  # layer 1 is joint either way


@pytest.mark.parametrize(
    ("fusion", "feature"), [("early", "concat"), ("late", "concat"), ("text", "cls_text")]
)
def test_batch_equals_one_expression_at_a_time(fusion, feature):
    encoder = _tiny(fusion=fusion, feature=feature).eval()
    pixels, ids, mask, index = _batch()
    with torch.no_grad():
        together = encoder(pixels, ids, mask, index)
        alone = [
            encoder(
                pixels[i : i + 1],
                ids[n : n + 1, : int(mask[n].sum())],
                mask[n : n + 1, : int(mask[n].sum())],
                torch.zeros(1, dtype=torch.long),
            )
            for n, i in enumerate(index.tolist())
        ]
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=0)


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = _tiny(feature="concat")
    checkpointed = _tiny(feature="concat", grad_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    grads = []
    for encoder in (plain, checkpointed):
        encoder(*_batch()).square().sum().backward()
        grads.append({n: p.grad for n, p in encoder.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_large_builds_on_meta_without_tokenizer():
    with torch.device("meta"):
        encoder = create_encoder("beit3_large")
    assert encoder.feature_dim == 1024
    assert encoder.preprocessor.image.size == 224
    assert encoder.preprocessor.image.mean == (0.5, 0.5, 0.5)
    assert encoder.preprocessor.image.interpolation == "bicubic"


# --- tokenizer ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    """A small sentencepiece model trained here, as a file and as a directory in XLM-R layout."""
    root = tmp_path_factory.mktemp("spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_prefix=str(root / "toy"), vocab_size=30, minloglevel=2
    )
    (root / "dir").mkdir()
    (root / "dir" / "sentencepiece.bpe.model").write_bytes((root / "toy.model").read_bytes())
    return root / "toy.model", root / "dir"


def test_tokenizer_uses_fairseq_ids_and_right_padding(spm_model):
    file, directory = spm_model
    sp = spm.SentencePieceProcessor(model_file=str(file))
    texts = ["a small blue square", "the red circle on the left"]
    for tokenizer in (build_beit3_tokenizer(file), build_beit3_tokenizer(directory)):
        out = tokenizer(texts)
        assert out["input_ids"].dtype == out["attention_mask"].dtype == torch.long
        for row, text in enumerate(texts):
            expected = [0] + [i + 1 for i in sp.encode(text)] + [2]
            n = len(expected)
            assert out["input_ids"][row, :n].tolist() == expected
            assert out["attention_mask"][row, :n].tolist() == [1] * n
            assert set(out["input_ids"][row, n:].tolist()) <= {1}
            assert set(out["attention_mask"][row, n:].tolist()) <= {0}
        assert out["attention_mask"][0].sum() < out["attention_mask"][1].sum() == out["input_ids"].shape[1]


def test_tokenizer_truncates_with_a_warning(spm_model, caplog):
    tokenizer = build_beit3_tokenizer(spm_model[0], max_length=6)
    with caplog.at_level(logging.WARNING, logger="evf.encoders.beit3.tokenizer"):
        out = tokenizer(["a small blue square", "the red circle on the left", "star"])
    assert "truncated 2 of 3 expression(s) to 6 tokens" in caplog.text
    assert out["input_ids"].shape == (3, 6)
    assert out["input_ids"][:2, -1].tolist() == [2, 2]
    assert tokenizer.max_length == 6


def test_tokenizer_path_errors(tmp_path, spm_model):
    with pytest.raises(ValueError, match="model.tokenizer"):
        build_preprocessor("beit3_large").tokenizer(["x"])
    with pytest.raises(FileNotFoundError, match="nowhere.spm"):
        build_beit3_tokenizer(tmp_path / "nowhere.spm")
    with pytest.raises(FileNotFoundError, match="sentencepiece.bpe.model"):
        build_beit3_tokenizer(tmp_path)
    assert build_beit3_tokenizer(None, default=spm_model[0])(["star"])["input_ids"].shape[0] == 1


def test_tiny_defaults_to_the_shipped_shapes_tokenizer():
    tokenizer = build_preprocessor("beit3_tiny").tokenizer
    ids = tokenizer(["the red circle on the left"])["input_ids"]
    assert tokenizer.max_length == VARIANTS["beit3_tiny"]["max_source_positions"] - 2
    assert tokenizer.vocab_size <= VARIANTS["beit3_tiny"]["vocab_size"]  # every id, <mask> included, fits
    assert ids[0, 0] == 0 and ids[0, -1] == 2


@pytest.mark.parametrize(
    ("fusion", "feature"), [("text", "cls_text"), ("late", "concat"), ("early", "cls_image")]
)
def test_feature_defaults_to_the_modes_natural_one(fusion, feature):
    assert create_encoder("beit3_tiny", fusion=fusion).feature == feature


def test_without_sub_ln_the_blocks_are_plain_pre_norm_and_load_only_their_own_kind(tmp_path):
    from evf.encoders.beit3.pretraining import build_objective

    plain = _tiny(sub_ln=False)
    names = set(plain.state_dict())
    assert not any(".inner_norm." in n or ".mlp.vision.norm." in n or ".mlp.text.norm." in n for n in names)
    assert names < set(_tiny().state_dict())  # only the sub-LN tensors are gone
    objective = build_objective("beit3_tiny", sub_ln=False)  # a file in unilm's layout without sub-LN
    written = objective.save(tmp_path / "plain.pth")
    loaded = create_encoder("beit3_tiny", checkpoint=written, sub_ln=False).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in objective.encoder.state_dict().items() if k in loaded)
    assert not create_encoder("beit3_tiny", checkpoint=written).sub_ln  # the file decides when not told
    with pytest.raises(CheckpointError, match="missing.*inner_norm.*build the encoder with sub_ln=False"):
        create_encoder("beit3_tiny", checkpoint=written, sub_ln=True)
    sub_ln_file = build_objective("beit3_tiny").save(tmp_path / "sub_ln.pth")
    assert create_encoder("beit3_tiny", checkpoint=sub_ln_file).sub_ln
    with pytest.raises(CheckpointError, match="unexpected.*inner_norm.*the file has BEIT-3's sub-LN"):
        create_encoder("beit3_tiny", checkpoint=sub_ln_file, sub_ln=False)


def test_sub_ln_changes_the_function_and_every_parameter_still_trains():
    torch.manual_seed(0)
    with_ln = _tiny()
    plain = _tiny(sub_ln=False)
    plain.load_state_dict({k: v for k, v in with_ln.state_dict().items() if k in plain.state_dict()})
    assert not torch.allclose(with_ln(*_batch()), plain(*_batch()))
    out = plain(*_batch())
    (out * torch.randn_like(out)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in plain.parameters())


def test_sincos_positions_initialise_the_patch_rows_only():
    from evf.encoders.beit3.modeling import sincos_positions

    encoder = _tiny(position_init="sincos")
    table = encoder.vision_embed.pos_embed.detach()
    side = SIZES["img_size"] // SIZES["patch_size"]
    expected = sincos_positions(side, SIZES["embed_dim"])
    assert torch.equal(table[3:], expected)  # rows 0-1 unused (fairseq), row 2 the CLS
    assert expected.shape == (side * side, SIZES["embed_dim"])
    assert torch.allclose(expected[0, : SIZES["embed_dim"] // 4], torch.zeros(SIZES["embed_dim"] // 4))
    assert len({tuple(r.tolist()) for r in expected}) == side * side  # every patch its own position
    assert table[2].abs().max() < 0.1  # the CLS row keeps the random init
    with pytest.raises(ValueError, match="position_init"):
        _tiny(position_init="rope")


def test_the_released_layout_writes_sub_ln_tensors_only_for_an_encoder_that_has_them():
    from evf.encoders.beit3.release import release_state

    plain, _ = release_state(create_encoder("beit3_tiny", sub_ln=False), "mm_extractor.beit3.")
    full, _ = release_state(create_encoder("beit3_tiny"), "mm_extractor.beit3.")
    sub_ln = {k for k in full if "inner_attn_ln" in k or "ffn_layernorm" in k}
    assert sub_ln and set(plain) == set(full) - sub_ln
