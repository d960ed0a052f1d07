"""Predictor: original-size outputs for odd sizes, K-shot rule, reuse of encodings, batching, and
agreement with the network's own forward; clear errors for bad inputs."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hhn.config import DecisionRule, load_preset
from hhn.device import inference_dtype
from hhn.errors import UserError
from hhn.kshot import vote_kshot
from hhn.network import HHN, ClassEmbeddings
from hhn.predictor import InvalidInputError, Predictor
from hhn.preprocess import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = (64, 64)


@pytest.fixture(scope="module")
def lite():
    torch.manual_seed(0)
    config = dataclasses.replace(load_preset("wfss-lite0"), image_size=SIZE)
    return Predictor(HHN(config), device="cpu", decision=DecisionRule())  # the network's own argmax


def image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def blob(h, w, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    return (((yy - cy) / h) ** 2 + ((xx - cx) / w) ** 2 < 0.06).astype(np.float32)


def test_odd_sizes_give_original_size_outputs(lite):
    support = lite.encode_support([image(41, 29, 1), image(60, 45, 2)], [blob(41, 29, 1), blob(60, 45, 2)])
    assert support.shots == 2 and support.masks.shape == (2, *SIZE)
    pred = lite.predict(image(37, 53, 3), support, blob(37, 53, 3))
    assert pred.fg_prob.shape == pred.mask.shape == (37, 53)
    assert pred.fg_prob.dtype == np.float32 and pred.mask.dtype == bool
    assert pred.fg_prob.min() >= 0 and pred.fg_prob.max() <= 1


def test_prediction_equals_the_network_forward_at_network_size(lite):
    img_q, img_s, prior_q, mask_s = image(64, 64, 4), image(64, 64, 5), blob(64, 64, 4), blob(64, 64, 5)
    pred = lite.predict(img_q, lite.encode_support([img_s], [mask_s]), prior_q)

    def normalised(x):
        t = torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255
        return (t - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    with torch.no_grad():
        logits, _ = lite.model(normalised(img_q), normalised(img_s), torch.from_numpy(prior_q)[None],
                               torch.from_numpy(mask_s)[None])
    np.testing.assert_allclose(pred.fg_prob, logits.softmax(dim=1)[0, 1].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pred.mask, logits.argmax(dim=1)[0].bool().numpy())


def test_kshot_is_mean_probability_and_vote_of_single_shots(lite):
    imgs = [image(50, 70, s) for s in (10, 11, 12)]
    masks = [blob(50, 70, s) for s in (10, 11, 12)]
    query, prior = image(45, 38, 13), blob(45, 38, 13)
    three = lite.predict(query, lite.encode_support(imgs, masks), prior)
    singles = [lite.predict(query, lite.encode_support([i], [m]), prior) for i, m in zip(imgs, masks)]
    np.testing.assert_allclose(three.fg_prob, np.mean([p.fg_prob for p in singles], axis=0), rtol=1e-5, atol=1e-6)
    votes = torch.from_numpy(np.stack([p.mask for p in singles]))[None]
    np.testing.assert_array_equal(three.mask, vote_kshot(votes)[0].numpy())


def test_decision_rule_blends_the_prior_and_thresholds_each_shot(lite):
    rule = DecisionRule(prior_weight=0.25, threshold=0.7)
    blended = Predictor(lite.model, device="cpu", decision=rule)
    imgs = [image(50, 70, s) for s in (20, 21)]
    masks = [blob(50, 70, s) for s in (20, 21)]
    query, prior = image(45, 38, 22), blob(45, 38, 22) * 0.9 + 0.05
    singles = [lite.predict(query, lite.encode_support([i], [m]), prior) for i, m in zip(imgs, masks)]
    scores = [0.75 * p.fg_prob + 0.25 * prior for p in singles]  # hand-applied rule, shot by shot
    two = blended.predict(query, blended.encode_support(imgs, masks), prior)
    np.testing.assert_allclose(two.fg_prob, np.mean(scores, axis=0), rtol=1e-5, atol=1e-6)
    votes = torch.from_numpy(np.stack([s > 0.7 for s in scores]))[None]
    np.testing.assert_array_equal(two.mask, vote_kshot(votes)[0].numpy())
    assert not np.array_equal(two.mask, lite.predict(query, lite.encode_support(imgs, masks), prior).mask)


def test_decision_rule_is_validated_and_round_trips():
    from hhn.config import HHNConfig

    for rule in (DecisionRule(0.5, 0.8), DecisionRule(0.5, 0.8, [1, 0.5, 0]), DecisionRule(0.5, 0.6, None, 0.06),
                 DecisionRule(0.5, 0.6, None, 0.06, True)):
        config = dataclasses.replace(load_preset("wfss-lite0"), decision=rule)
        assert HHNConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert DecisionRule(0.5, 0.8, [1, 0.5, 0]).trim == (1.0, 0.5, 0.0)
    assert not DecisionRule(0, 0.5, (1, 0, 0)).is_argmax
    assert not DecisionRule(0, 0.5, snap=0.06).is_argmax
    for bad in (0, 0.5, -0.1):
        with pytest.raises(UserError, match="snap needs a band"):
            DecisionRule(0.5, 0.5, snap=bad)
    for bad in ((1, 0), (0, 0, 0), (1, -1, 0)):
        with pytest.raises(UserError, match="tap weights"):
            DecisionRule(0.5, 0.5, bad)
    assert load_preset("tlg-resnet50-pascal").decision.is_argmax
    for bad in ((1.5, 0.5), (0.5, 1.0), (-0.1, 0.5)):
        with pytest.raises(UserError, match="decision rule"):
            DecisionRule(*bad)
    for bad in (("x", 0.5), (0.5, None), (0.5, 0.5, "abc"), (0.5, 0.5, None, "wide"), (0.5, 0.5, 3)):
        with pytest.raises(UserError, match="decision rule needs numbers"):  # e.g. a hand-edited model.json
            DecisionRule(*bad)
    for bad in ("yes", 1, None):
        with pytest.raises(UserError, match="refine_supports must be true or false"):
            DecisionRule(0.5, 0.6, refine_supports=bad)


def test_encoded_images_are_reusable_and_equivalent(lite):
    raw_s, raw_q = image(33, 47, 20), image(52, 31, 21)
    enc_s, enc_q = lite.encode_image(raw_s), lite.encode_image(raw_q)
    assert enc_q.original_size == (52, 31)
    a = lite.predict(raw_q, lite.encode_support([raw_s], [blob(33, 47, 20)]), blob(52, 31, 21))
    b = lite.predict(enc_q, lite.encode_support([enc_s], [blob(33, 47, 20)]), blob(52, 31, 21))
    np.testing.assert_array_equal(a.fg_prob, b.fg_prob)


def test_predict_batch_matches_single_predictions(lite):
    lite_small_batches = Predictor(lite.model, device="cpu", batch_pairs=4)
    support = lite_small_batches.encode_support([image(40, 40, 30), image(48, 36, 31)],
                                                [blob(40, 40, 30), blob(48, 36, 31)])
    queries = [image(39, 41, s) for s in (32, 33, 34)]
    priors = [blob(39, 41, s) for s in (32, 33, 34)]
    batch = lite_small_batches.predict_batch(queries, support, priors)  # chunks of 2 queries x 2 shots
    assert len(batch) == 3
    for q, p, got in zip(queries, priors, batch):
        single = lite_small_batches.predict(q, support, p)
        np.testing.assert_allclose(got.fg_prob, single.fg_prob, rtol=1e-5, atol=1e-6)


def test_text_model_needs_embeddings_and_uses_them():
    torch.manual_seed(0)
    predictor = Predictor(HHN(dataclasses.replace(load_preset("tlg-vgg16-pascal"), image_size=SIZE)), "cpu")
    with pytest.raises(UserError, match="needs the class's CLIP text embeddings"):
        predictor.encode_support([image(30, 30, 1)], [blob(30, 30, 1)])
    gen = torch.Generator().manual_seed(0)
    text = ClassEmbeddings(*(F.normalize(torch.randn(512, generator=gen), dim=0) for _ in range(3)))
    support = predictor.encode_support([image(30, 30, 1)], [blob(30, 30, 1)], text=text)
    assert support.text.fg.shape == (1, 512)
    pred = predictor.predict(image(35, 30, 2), support, blob(35, 30, 2))
    assert pred.fg_prob.shape == (35, 30)


@pytest.mark.parametrize(("bad", "message"), [
    (np.zeros((20, 20), np.uint8), "uint8 RGB array"),
    (np.zeros((20, 20, 4), np.uint8), "convert gray/RGBA"),
    (np.zeros((20, 20, 3), np.float32), "float32 array"),
    ([[0, 0, 0]], "got a list"),
])
def test_bad_images_are_rejected_clearly(lite, bad, message):
    with pytest.raises(InvalidInputError, match=message):
        lite.encode_image(bad)


def test_bad_masks_and_priors_are_rejected_clearly(lite):
    img = image(20, 30, 1)
    with pytest.raises(InvalidInputError, match=r"has shape \(30, 20\) but its image is \(20, 30\)"):
        lite.encode_support([img], [np.zeros((30, 20), np.float32)])
    with pytest.raises(InvalidInputError, match=r"in \[0, 1\]"):
        lite.encode_support([img], [np.full((20, 30), 255, np.float32)])
    with pytest.raises(InvalidInputError, match="one mask per support image"):
        lite.encode_support([img, img], [blob(20, 30, 1)])
    support = lite.encode_support([img], [blob(20, 30, 1)])
    with pytest.raises(InvalidInputError, match="query prior 0"):
        lite.predict(img, support, np.zeros((20, 31), np.float32))
    with pytest.raises(InvalidInputError, match="one prior per query"):
        lite.predict_batch([img, img], support, [blob(20, 30, 1)])


def test_encodings_from_another_model_are_refused(lite):
    torch.manual_seed(1)
    other = Predictor(HHN(dataclasses.replace(load_preset("wfss-lite0"), image_size=(96, 96), name="other")), "cpu")
    foreign = other.encode_image(image(20, 20, 1))
    with pytest.raises(InvalidInputError, match="encoded by model 'other'"):
        lite.encode_support([foreign], [blob(20, 20, 1)])


# ------------------------------------------------------------------------------------- precision
def test_inference_dtype_is_float16_on_cuda_and_float32_elsewhere_by_default():
    assert inference_dtype("auto", torch.device("cuda")) == torch.float16
    assert inference_dtype("auto", torch.device("cpu")) is None
    assert inference_dtype("auto", torch.device("mps")) is None
    assert inference_dtype("float32", torch.device("cuda")) is None
    assert inference_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(UserError, match="unknown precision 'half'"):
        inference_dtype("half", torch.device("cpu"))


def _low_precision_agrees(model, precision, device):
    """Logits and fg_prob of ``precision`` against float32 on ``device`` (same model, same inputs)."""
    supports, masks = [image(64, 64, 11), image(50, 70, 12)], [blob(64, 64, 11), blob(50, 70, 12)]
    queries, priors = [image(64, 64, 13), image(45, 61, 14)], [blob(64, 64, 13), blob(45, 61, 14)]
    outputs = {}
    for name in ("float32", precision):
        predictor = Predictor(model, device=device, decision=DecisionRule(), precision=name)
        support = predictor.encode_support(supports, masks)
        scored = predictor.logits_batch(queries, support, priors)
        outputs[name] = (scored, [predictor.decide(s) for s in scored])
    for ref, low in zip(*(outputs[n][0] for n in ("float32", precision))):
        assert low.logits.dtype == torch.float32 and all(f.dtype == torch.float32 for f in low.query.features)
        scale = ref.logits.abs().max().item()
        assert (low.logits - ref.logits).abs().max().item() <= 0.05 * scale + 1e-3
        assert not torch.equal(low.logits, ref.logits)  # the low precision did run
    for ref, low in zip(*(outputs[n][1] for n in ("float32", precision))):
        assert low.fg_prob.dtype == np.float32
        assert np.abs(low.fg_prob - ref.fg_prob).mean() < 0.01


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_low_precision_path_matches_float32_on_cpu(lite, precision):
    """The CUDA float16 / bfloat16 path (autocast around the backbone and the network, float32 taps and
    logits) runs on CPU too, and stays within low-precision tolerance of float32."""
    _low_precision_agrees(lite.model, precision, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on GPU machines)")
def test_float16_on_cuda_matches_float32_on_cuda(lite):
    _low_precision_agrees(lite.model, "float16", "cuda")
