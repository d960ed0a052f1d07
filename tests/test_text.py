"""CLIP text priors with a tiny random open_clip model (no download): phrases, template, caching.

The tiny model is registered as an open_clip config, created with random weights, saved to a file
and loaded back through :class:`hhn.text.TextEncoder` (the same path as real weights). Reference
embeddings are computed directly with open_clip from the same file.
"""

from __future__ import annotations

import json
import time

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from hhn import text
from hhn.errors import PriorUnavailableError, UserError
from hhn.text import GENERIC_BACKGROUND, ClassPhrases, TextEncoder, class_phrases, lookup_phrases
from hhn.weights import locations

TINY = "wfss-tiny-clip-test"
TINY_CFG = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """A random tiny CLIP saved as safetensors; returns its path."""
    folder = tmp_path_factory.mktemp("tiny_clip")
    (folder / f"{TINY}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(folder / f"{TINY}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY, pretrained=None)
    path = folder / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def encoder(tiny_file):
    return TextEncoder(TINY, pretrained=str(tiny_file), device="cpu")


@pytest.fixture(scope="module")
def reference(tiny_file):
    """prompt -> normalised embedding computed directly with open_clip from the same file."""
    model = open_clip.create_model(TINY, pretrained=str(tiny_file)).eval()
    tokenizer = open_clip.get_tokenizer(TINY)

    def embed(prompt: str) -> torch.Tensor:
        with torch.no_grad():
            e = model.encode_text(tokenizer([prompt]))[0]
        return e / e.norm()

    return embed


def test_embed_phrases_shape_dtype_norm(encoder):
    emb = encoder.embed_phrases(["a cat", "two dogs", "a cat"])
    assert emb.shape == (3, 512) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert torch.equal(emb[0], emb[2]) and not torch.allclose(emb[0], emb[1])
    assert encoder.embed_phrases([]).shape == (0, 512)


def test_class_embeddings_use_template_and_paper_phrases(encoder, reference):
    ce = encoder.class_embeddings("cat", benchmark="pascal")
    assert all(t.shape == (1, 512) for t in ce)
    torch.testing.assert_close(ce.fg[0], reference("a clean origami cat."))
    torch.testing.assert_close(ce.refine[0], reference("a clean origami cat with fur."))
    torch.testing.assert_close(ce.bg[0], reference("a clean origami house,garden."))
    other = encoder.class_embeddings("cat", template="a photo of a {}.")
    torch.testing.assert_close(other.fg[0], reference("a photo of a cat."))


def test_comma_separated_synonyms_are_one_prompt(encoder, reference):
    """As in the authors' zeroshot_classifier: the whole string (commas included) is one prompt."""
    ce = encoder.class_embeddings("person", benchmark="pascal")
    whole = reference("a clean origami person with clothes,people,human.")
    torch.testing.assert_close(ce.fg[0], whole)
    parts = torch.stack([reference(f"a clean origami {p}.") for p in ("person with clothes", "people", "human")])
    split_mean = parts.mean(0) / parts.mean(0).norm()
    assert not torch.allclose(ce.fg[0], split_mean, atol=1e-4)


def test_several_templates_are_averaged_then_renormalised(encoder, reference):
    templates = ["a clean origami {}.", "a photo of a {}."]
    got = encoder.embed_phrase("dog", templates)
    mean = (reference("a clean origami dog.") + reference("a photo of a dog.")) / 2
    torch.testing.assert_close(got, mean / mean.norm())


def test_any_class_name_gets_generic_phrases_and_caching(encoder, monkeypatch):
    calls = []
    real = encoder.model.encode_text
    monkeypatch.setattr(encoder.model, "encode_text", lambda tokens: calls.append(len(tokens)) or real(tokens))
    ce = encoder.class_embeddings("Mitochondrion")
    assert torch.equal(ce.fg, ce.refine)  # fg = refine = the name
    bg = encoder.embed_phrase(GENERIC_BACKGROUND)
    torch.testing.assert_close(ce.bg[0], bg)
    n = sum(calls)
    assert n <= 2  # "mitochondrion" prompt once, the generic bg prompt once
    again = encoder.class_embeddings("Mitochondrion")
    assert sum(calls) == n and torch.equal(again.fg, ce.fg)  # cached: nothing re-encoded
    encoder.class_embeddings("nucleus")
    assert sum(calls) == n + 1  # only the new name; the generic bg prompt is cached


def test_phrase_lookup_spellings_and_tables():
    assert lookup_phrases("Dining_Table", "pascal") == ClassPhrases(
        "diningtable", "diningtable with legs", "dining room, restaurant")
    assert lookup_phrases("airplane", "pascal").fg == "aeroplane"
    assert lookup_phrases("motorcycle", "coco").fg == "motorbike"
    assert lookup_phrases("TV", "coco").fg == "tvmonitor screen"
    # The two tables differ for some classes; None prefers VOC.
    assert lookup_phrases("bus", "pascal").bg == "street,station"
    assert lookup_phrases("bus", "coco").bg == "station,road"
    assert lookup_phrases("bus").bg == "street,station"
    assert lookup_phrases("giraffe").refine == "giraffe with a long neck"  # COCO only
    assert lookup_phrases("nucleus") is None
    assert class_phrases("  cell   nucleus ") == ClassPhrases("cell nucleus", "cell nucleus", GENERIC_BACKGROUND)
    with pytest.raises(UserError):
        lookup_phrases("cat", "ade20k")
    with pytest.raises(UserError):
        class_phrases("   ")


def test_shipped_tables_match_the_research_copy():
    data = text._phrase_data()
    assert len(data["voc"]["names"]) == len(data["voc"]["fg"]) == 20
    assert all(len(data["coco"][k]) == 80 for k in ("names", "fg", "refine", "bg"))


def test_local_dir_model_matches_file_model(tiny_file, encoder, tmp_path):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    (tmp_path / "open_clip_model.safetensors").write_bytes(tiny_file.read_bytes())
    local = TextEncoder(f"local-dir:{tmp_path}")
    torch.testing.assert_close(local.embed_phrases(["a cat"]), encoder.embed_phrases(["a cat"]))


def test_placed_file_for_a_quick_gelu_tag_is_used(tiny_file, tmp_path, monkeypatch):
    """A tag resolved from our weight folder, with the tag's QuickGELU setting applied."""
    monkeypatch.setenv("WFSS_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(locations, "user_weights_dir", lambda: tmp_path / "none")
    cfg = {"hf_hub": "nobody/none/", "quick_gelu": True}
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda m, t: cfg if (m, t) == (TINY, "fake") else {})
    (tmp_path / f"{TINY}-fake.safetensors").write_bytes(tiny_file.read_bytes())
    enc = TextEncoder(TINY, pretrained="fake", cache_dir=str(tmp_path / "hf"))
    assert enc.weights.checkpoint == tmp_path / f"{TINY}-fake.safetensors"
    assert isinstance(enc.model.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert enc.model.visual is None  # image tower dropped


def test_wrong_file_for_architecture_is_prior_unavailable(tmp_path):
    path = tmp_path / "wrong.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(PriorUnavailableError, match="could not be loaded"):
        TextEncoder(TINY, pretrained=str(path))


def test_unavailable_clip_fails_fast_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WFSS_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setattr(locations, "user_weights_dir", lambda: tmp_path / "user")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    start = time.perf_counter()
    with pytest.raises(PriorUnavailableError) as err:
        TextEncoder("ViT-B-32", "openai", cache_dir=str(tmp_path / "hf"))
    assert time.perf_counter() - start < 2.0
    assert str(tmp_path / "w" / "ViT-B-32-openai.safetensors") in str(err.value)
