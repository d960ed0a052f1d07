"""Tag priors: the interface, the co-segmentation prior and the CLIP Grad-CAM prior (random tiny CLIP)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hhn.errors import PriorUnavailableError
from hhn.priors.base import ClassPrior, TaggedImage, TagPrior
from hhn.priors.catalog import COSEG_PRIORS, TAG_PRIORS, build_tag_prior
from hhn.priors.coseg import CosegPrior, otsu
from hhn.priors.ensemble import MeanPrior
from hhn.priors.features import BoundedCache, DenseFeatures, descriptors_from_taps

SIZE, CELL = 32, 4


def _scene(rng: np.random.Generator, square: bool) -> tuple[np.ndarray, np.ndarray]:
    """Gray noise over green grass; optionally a red 12x12 square on the 4-pixel grid. Returns image, mask."""
    image = rng.integers(100, 130, size=(SIZE, SIZE, 3)).astype(np.uint8)
    image[24:] = (40, 150, 40)
    mask = np.zeros((SIZE, SIZE), np.float32)
    if square:
        y, x = CELL * rng.integers(0, 3), CELL * rng.integers(0, 5)
        image[y:y + 12, x:x + 12] = (220, 30, 30)
        mask[y:y + 12, x:x + 12] = 1.0
    return image, mask


def colour_features(image: np.ndarray, weights=None) -> torch.Tensor:
    """Mean colour of each 4x4 cell as a unit vector: (3, 8, 8) descriptors (a stand-in for a backbone)."""
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255.0
    return F.normalize(F.avg_pool2d(x, CELL)[0], dim=0)


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    return float((pred & gt).sum() / max((pred | gt).sum(), 1))


@pytest.mark.parametrize("refine", [False, True])
def test_coseg_finds_what_recurs_in_positives_only(refine):
    rng = np.random.default_rng(0)
    positives = [_scene(rng, True) for _ in range(4)]
    negatives = [_scene(rng, False)[0] for _ in range(3)]
    prior = CosegPrior(features=colour_features, bank_pool=1, refine=refine)
    fitted = prior.fit("square", [TaggedImage(im) for im, _ in positives], negatives)
    query, truth = _scene(rng, True)
    for image, mask in [*positives, (query, truth)]:  # positives (leave-one-out) and an unseen query
        out = fitted(image)
        assert out.shape == (SIZE, SIZE) and out.dtype == np.float32
        assert _iou(out > 0.5, mask > 0.5) > 0.8
    if refine:  # the second pass has a fixed threshold: an image without the class stays empty
        assert not (fitted(negatives[0]) > 0.5).any()


def test_user_mask_replaces_prior_and_teaches_it():
    rng = np.random.default_rng(1)
    (a, mask_a), (b, mask_b) = _scene(rng, True), _scene(rng, True)
    prior = CosegPrior(features=colour_features, bank_pool=1, refine=False)
    taught = prior.fit("square", [TaggedImage(a, mask_a), TaggedImage(b)])
    assert np.array_equal(taught(TaggedImage(a, mask_a)), mask_a)  # the user's mask is returned as is
    assert _iou(taught(b) > 0.5, mask_b > 0.5) > 0.8                # and it taught the prior
    untaught = prior.fit("square", [TaggedImage(a), TaggedImage(b)])
    # one other tagged image and no negative: everything in b recurs in a, nothing is discriminative
    assert _iou(untaught(b) > 0.5, mask_b > 0.5) < 0.5


def _shoot_scene(positives: int = 4, negatives: int = 3) -> tuple[dict[int, torch.Tensor], list, list]:
    """Descriptors of tagged images of one photo shoot: 2x2 cells, three of grass and one of an animal.

    The positives' grass is one field (cosine 0.80 between positives) and the negatives' another (0.50
    to the positives' grass); the animal matches the other positives' animals at 0.52 and the negatives'
    cows at 0.23. Returns {image id: (C, 2, 2) unit descriptors} and the positive and negative images
    (constant images whose first pixel is the id)."""
    dim = 2 + 4 * (positives + negatives)  # two shared directions and one of its own per cell
    basis = torch.eye(dim)
    grass, animal = basis[0], basis[1]
    unique = iter(basis[2:])

    def mix(common, cos_common):  # cos_common with ``common``, the rest along a direction of its own
        return cos_common * common + (1 - cos_common ** 2) ** 0.5 * next(unique)

    a, e = 0.8 ** 0.5, 0.52 ** 0.5
    cells = {}
    for i in range(positives):
        cells[i] = [mix(grass, a), mix(grass, a), mix(grass, a), mix(animal, e)]
    for k in range(positives, positives + negatives):
        cells[k] = [mix(grass, 0.5 / a), mix(grass, 0.5 / a), mix(grass, 0.5 / a), mix(animal, 0.23 / e)]
    desc = {i: F.normalize(torch.stack(c, dim=1).view(dim, 2, 2), dim=0) for i, c in cells.items()}
    images = {i: np.full((8, 8, 3), i, np.uint8) for i in desc}
    return desc, [images[i] for i in range(positives)], [images[k] for k in range(positives, len(images))]


@pytest.mark.parametrize("contrast, finds", [("difference", "grass"), ("ratio", "animal")])
def test_coseg_contrast_on_a_shared_field(contrast, finds):
    desc, positives, negatives = _shoot_scene()
    prior = CosegPrior(features=lambda pixels, weights=None: desc[int(pixels[0, 0, 0])], bank_pool=1,
                       refine=False, self_support=False, contrast=contrast)
    scores, cut = prior.fit("sheep", positives, negatives).scores(positives[0])  # leave-one-out first pass
    found = (scores > cut).flatten().tolist()
    assert found == ([True, True, True, False] if finds == "grass" else [False, False, False, True])


def test_coseg_rejects_an_unknown_contrast():
    with pytest.raises(ValueError, match="contrast must be one of difference, ratio"):
        CosegPrior(features=colour_features, contrast="quotient")


def test_coseg_shapes_and_range_with_backbone_features():
    features = DenseFeatures(size=64, pretrained=False)
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, size=(37 + 5 * i, 53, 3), dtype=np.uint8) for i in range(4)]
    fitted = CosegPrior(features=features).fit("thing", images[:3], images[3:])
    for image in images:
        out = fitted(image)
        assert out.shape == image.shape[:2] and out.dtype == np.float32
        assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    assert features(images[0]).shape == (features.dim, 8, 8)


def test_descriptors_unit_norm_on_stride8_grid():
    taps = [torch.randn(1, 4, 10, 12), torch.randn(1, 6, 5, 6), torch.randn(7, 3, 3)]
    d = descriptors_from_taps(taps)
    assert d.shape == (17, 10, 12)
    assert torch.allclose(d.norm(dim=0), torch.ones(10, 12), atol=1e-5)
    # tap weights: tap i's share of the squared norm is w_i^2 / sum w^2
    w = descriptors_from_taps(taps, (1.0, 1.0, 2.0))
    assert torch.allclose(w[10:].pow(2).sum(0), torch.full((10, 12), 4 / 6), atol=1e-5)
    with pytest.raises(ValueError, match="weights"):
        descriptors_from_taps(taps, (1.0, 2.0))


def test_feature_memory_is_bounded_and_keeps_recent_images():
    features = DenseFeatures(size=32, pretrained=False, memory_items=2)
    images = [np.full((20, 20, 3), v, dtype=np.uint8) for v in (10, 90, 170)]
    first = features(images[0])
    features(images[1])
    features(images[0])  # most recent again
    features(images[2])  # evicts images[1], the least recently used
    assert len(features._memory) == 2
    assert torch.equal(features(images[0]), first)  # still cached, same values
    cache = BoundedCache(2)
    assert [cache.get_or_make(k, lambda k=k: k * 10) for k in (1, 2, 1, 3)] == [10, 20, 10, 30]
    assert list(cache) == [1, 3]


def test_mean_prior_averages_its_members_and_keeps_user_masks():
    class Constant(TagPrior):
        def __init__(self, value):
            self.value = value

        def fit(self, class_name, positives, negatives=()):
            value = self.value

            class Fitted(ClassPrior):
                def _map(self, pixels):
                    return np.full(pixels.shape[:2], value, np.float32)

            return Fitted(class_name)

    image = np.zeros((5, 7, 3), np.uint8)
    fitted = MeanPrior([Constant(0.2), Constant(1.4), Constant(0.6)]).fit("c", [image])
    out = fitted(image)
    assert out.shape == (5, 7) and out.dtype == np.float32
    np.testing.assert_allclose(out, (0.2 + 1.0 + 0.6) / 3)  # each member clipped to [0, 1] first
    mask = np.eye(5, 7, dtype=np.float32)
    assert np.array_equal(fitted(TaggedImage(image, mask)), mask)
    with pytest.raises(ValueError, match="at least one"):
        MeanPrior([])


def test_catalog_builds_the_named_priors():
    single = build_tag_prior("coseg", cache_dir=None)
    assert isinstance(single, CosegPrior) and single.features.size == 320
    multi = build_tag_prior("coseg-ms")
    assert isinstance(multi, MeanPrior) and len(multi.members) == 3
    assert [m.features.size for m in multi.members] == list(COSEG_PRIORS["coseg-ms"].sizes) == [320, 448, 576]
    stand_in = lambda pixels, weights=None: None  # noqa: E731
    asked = []
    reused = build_tag_prior("coseg", reuse=lambda dense: asked.append(dense.size) or stand_in)
    assert reused.features is stand_in and asked == [320]
    with pytest.raises(ValueError, match="unknown tag prior 'nope'"):
        build_tag_prior("nope")
    ratio = build_tag_prior("coseg-ratio")
    assert isinstance(ratio, CosegPrior) and ratio.contrast == "ratio" and ratio.features.size == 320
    assert single.contrast == "difference" and {m.contrast for m in multi.members} == {"difference"}
    assert set(TAG_PRIORS) == {"coseg", "coseg-ms", "coseg-ratio", "coseg-objects", "gradcam"}


def test_otsu_splits_two_modes():
    values = torch.cat([torch.full((50,), 0.1), torch.full((30,), 0.9)]) + 0.01 * torch.randn(80)
    assert 0.2 < otsu(values) < 0.8
    assert otsu(torch.ones(5)) == pytest.approx(1.0)


def test_tagged_image_validation():
    with pytest.raises(ValueError, match="uint8"):
        TaggedImage(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="match"):
        TaggedImage(np.zeros((4, 4, 3), np.uint8), np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        TaggedImage(np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 2.0, np.float32))


# ---------------------------------------------------------------- CLIP Grad-CAM
@pytest.fixture(scope="module")
def tiny_clip():
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(1)  # a random model whose CAMs are not all negative (ReLU -> flat) for these inputs
    model = CLIP(embed_dim=32,
                 vision_cfg=CLIPVisionCfg(layers=(1, 1, 1, 1), width=16, head_width=8, image_size=64),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    return model, open_clip.get_tokenizer("RN50")


@pytest.mark.parametrize("vocabulary", [(), ("dog", "grass", "sky")])
def test_gradcam_shapes_and_range(tiny_clip, vocabulary):
    from hhn.priors.gradcam import GradCamPrior

    model, tokenizer = tiny_clip
    prior = GradCamPrior(model, tokenizer, vocabulary=vocabulary)
    fitted = prior.fit("cat")
    rng = np.random.default_rng(3)
    for shape in [(45, 70, 3), (64, 64, 3)]:
        out = fitted(rng.integers(0, 256, size=shape, dtype=np.uint8))
        assert out.shape == shape[:2] and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert out.max() == pytest.approx(1.0) and out.min() == pytest.approx(0.0)  # min-max normalised
    assert all(p.grad is None for p in model.parameters())  # Grad-CAM leaves the model untouched
    mask = np.zeros((45, 70), np.float32)
    image = rng.integers(0, 256, size=(45, 70, 3), dtype=np.uint8)
    assert np.array_equal(fitted(TaggedImage(image, mask)), mask)


def test_gradcam_matches_reference_formula(tiny_clip):
    """Recompute the CAM without hooks: A = layer4 output, w = mean of dScore/dA, ReLU(sum w A), min-max."""
    from hhn.priors.gradcam import CLIP_MEAN, CLIP_STD, PROMPT, GradCamPrior

    model, tokenizer = tiny_clip
    image = np.random.default_rng(5).integers(0, 256, size=(50, 40, 3), dtype=np.uint8)
    got = GradCamPrior(model, tokenizer, vocabulary=("dog",)).fit("cat")(image)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1)
    x = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    v = model.visual
    acts = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x))))).detach().requires_grad_(True)
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokenizer([PROMPT.format("cat"), PROMPT.format("dog")])), dim=-1)
    score = (100 * F.normalize(v.attnpool(acts), dim=-1) @ text.T).softmax(-1)[0, 0]
    (grads,) = torch.autograd.grad(score, acts)
    cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=(50, 40), mode="bilinear", align_corners=False)[0, 0].detach()
    cam = (cam - cam.min()) / (cam.max() - cam.min())
    assert np.allclose(got, cam.numpy(), atol=1e-5)


def test_gradcam_class_changes_map(tiny_clip):
    from hhn.priors.gradcam import GradCamPrior

    model, tokenizer = tiny_clip
    prior = GradCamPrior(model, tokenizer, vocabulary=("dog", "cat", "boat"))
    image = np.random.default_rng(4).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    assert not np.allclose(prior.fit("cat")(image), prior.fit("boat")(image))


def test_gradcam_unavailable_weights(tmp_path, monkeypatch):
    from hhn.priors.gradcam import GradCamPrior

    with pytest.raises(PriorUnavailableError, match="coseg"):
        GradCamPrior.from_pretrained("RN50", str(tmp_path / "missing.safetensors"))
    import hhn.weights.clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hhn.weights.clip, "cached_clip_file", lambda *a, **k: None)  # as on a machine without them
    with pytest.raises(PriorUnavailableError, match="RN50"):
        GradCamPrior.from_pretrained("RN50", "openai")


def test_gradcam_needs_a_resnet(tiny_clip):
    from hhn.priors.gradcam import GradCamPrior

    class NotResNet(torch.nn.Module):
        visual = torch.nn.Identity()

    with pytest.raises(ValueError, match="ResNet"):
        GradCamPrior(NotResNet(), tiny_clip[1])
