"""The objectness head and the co-segmentation prior's objects-in-clutter mode (``coseg-objects``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_priors import SIZE, colour_features

from hhn.errors import UserError
from hhn.priors.base import TaggedImage
from hhn.priors.catalog import build_tag_prior
from hhn.priors.coseg import (
    CLEAR_RECURRENCE,
    OBJECT_RECURRENCE_DROP,
    THING_CUT,
    THING_LIFT,
    THING_SURE,
    CosegPrior,
)
from hhn.priors.objectness import (
    DEFAULT_HEAD,
    MSRC_STUFF,
    MSRC_THINGS,
    ObjectnessHead,
    fit_head,
    fit_objectness,
    training_cells,
)

RED, YELLOW, GREEN, BLUE = (220, 30, 30), (220, 220, 30), (40, 150, 40), (30, 30, 220)


#: red and yellow cells are things; gray, green and blue ones stuff (on ``colour_features``)
COLOUR_HEAD = ObjectnessHead(torch.tensor([8.0, -4.0, -4.0]), -1.0)


def _clutter(rng: np.random.Generator, objects: dict[tuple, int],
             ground: tuple = GREEN) -> tuple[np.ndarray, dict[tuple, np.ndarray]]:
    """Gray noise over a ``ground`` strip (rows 24-31: the context) with ``count`` 8x8 squares of each colour
    above it on the 4-pixel grid, not overlapping. Returns the image and each colour's mask."""
    image = rng.integers(100, 130, size=(SIZE, SIZE, 3)).astype(np.uint8)
    image[24:] = ground
    masks, free = {}, [(y, x) for y in range(0, 17, 8) for x in range(0, SIZE - 7, 8)]
    rng.shuffle(free)
    for colour, count in objects.items():
        masks[colour] = np.zeros((SIZE, SIZE), bool)
        for _ in range(count):
            y, x = free.pop()
            image[y:y + 8, x:x + 8] = colour
            masks[colour][y:y + 8, x:x + 8] = True
    return image, masks


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    return float((pred & gt).sum() / max((pred | gt).sum(), 1))


def test_thing_classes_compete_and_are_absent_where_they_are_absent():
    """Red and yellow squares, tagged together in half of their images: each class's map is its own
    squares, not the other class's, and empty on an image without it."""
    rng = np.random.default_rng(0)
    red_only = [_clutter(rng, {RED: 1}) for _ in range(2)]
    yellow_only = [_clutter(rng, {YELLOW: 1}) for _ in range(2)]
    both = [_clutter(rng, {RED: 1, YELLOW: 1}) for _ in range(2)]
    plain = [_clutter(rng, {}) for _ in range(2)]
    prior = CosegPrior(features=colour_features, bank_pool=1, objectness=COLOUR_HEAD)
    red = prior.fit("red", [TaggedImage(im) for im, _ in red_only + both], [im for im, _ in yellow_only + plain])
    yellow = prior.fit("yellow", [TaggedImage(im) for im, _ in yellow_only + both],
                       [im for im, _ in red_only + plain])
    assert red.is_thing and yellow.is_thing
    for fitted in (red, yellow):
        assert np.mean([fitted._object_recurrence_drop(p) for p in fitted.positives]) < OBJECT_RECURRENCE_DROP
    query, masks = _clutter(rng, {RED: 2, YELLOW: 1})
    assert _iou(red(query) > 0.5, masks[RED]) > 0.8
    assert _iou(yellow(query) > 0.5, masks[YELLOW]) > 0.8
    assert not (red(_clutter(rng, {YELLOW: 2})[0]) > 0.5).any()
    assert not (yellow(_clutter(rng, {})[0]) > 0.5).any()


def test_context_that_recurs_with_a_class_is_not_the_class():
    """Every red image stands on a blue road, the negatives on a greener blue one (similar context, not the
    same): without the head the road is learnt as red; with it only the squares are."""
    rng = np.random.default_rng(2)
    positives = [TaggedImage(_clutter(rng, {RED: 1}, BLUE)[0]) for _ in range(4)]
    negatives = [_clutter(rng, {}, (30, 150, 220))[0] for _ in range(3)]
    query, masks = _clutter(rng, {RED: 2}, BLUE)
    road = np.zeros((SIZE, SIZE), bool)
    road[24:] = True
    gated = CosegPrior(features=colour_features, bank_pool=1, objectness=COLOUR_HEAD).fit("red", positives, negatives)
    assert gated.is_thing
    assert _iou(gated(query) > 0.5, masks[RED]) > 0.8 and not (gated(query) > 0.5)[road].any()
    plain = CosegPrior(features=colour_features, bank_pool=1).fit("red", positives, negatives)
    assert (plain(query) > 0.5)[road].mean() > 0.5 and _iou(plain(query) > 0.5, masks[RED]) < 0.2


def test_a_stuff_class_keeps_the_plain_steps():
    """The green field, tagged where it shows and absent from the negatives, is stuff to the head: it is
    mapped by the ungated steps (and found)."""
    rng = np.random.default_rng(1)
    positives = [_clutter(rng, {RED: 1}) for _ in range(3)]
    negatives = []
    for _ in range(3):
        image, _ = _clutter(rng, {RED: 1})
        image[24:] = rng.integers(100, 130, size=(SIZE - 24, SIZE, 3))
        negatives.append(image)
    prior = CosegPrior(features=colour_features, bank_pool=1, objectness=COLOUR_HEAD)
    field = prior.fit("field", [TaggedImage(im) for im, _ in positives], negatives)
    assert not field.is_thing
    query, _ = _clutter(rng, {RED: 1})
    truth = np.zeros((SIZE, SIZE), bool)
    truth[24:] = True
    assert _iou(field(query) > 0.5, truth) > 0.8


def test_a_class_that_recurs_outside_its_object_cells_keeps_the_plain_steps():
    """A purple field (objectness just under the object cut, like an unseen stuff class) under gray noise, with a
    red square (a thing) in every tagged image and in every negative. The field's top cells look object-like
    and stand out from the gray, so the three earlier conditions alone would send it down the object path;
    but among the object cells only the red squares are left, which recur in the negatives as well: the
    recurrence drops, the class keeps the plain steps, and the field is found."""
    rng = np.random.default_rng(4)
    purple, gray = (150, 40, 200), (115, 115, 115)
    positives = [TaggedImage(_clutter(rng, {RED: 1}, purple)[0]) for _ in range(4)]
    negatives = [_clutter(rng, {RED: 1}, gray)[0] for _ in range(3)]
    fitted = CosegPrior(features=colour_features, bank_pool=1, objectness=COLOUR_HEAD).fit("field", positives,
                                                                                           negatives)
    top_objectness, lift, top_score = np.mean([fitted._top_cells(p) for p in fitted.positives], axis=0)
    assert top_objectness >= THING_CUT and (lift >= THING_LIFT or top_score < CLEAR_RECURRENCE)
    assert np.mean([fitted._object_recurrence_drop(p) for p in fitted.positives]) >= OBJECT_RECURRENCE_DROP
    assert not fitted.is_thing
    query = _clutter(rng, {RED: 1}, purple)[0]
    truth = np.zeros((SIZE, SIZE), bool)
    truth[24:] = True
    assert _iou(fitted(query) > 0.5, truth) > 0.8


@pytest.mark.parametrize("colour, elsewhere, thing", [((150, 40, 200), GREEN, False), (YELLOW, BLUE, True)])
def test_a_field_is_a_thing_only_when_the_head_is_sure(colour, elsewhere, thing):
    """A field filling most of each tagged image recurs clearly but does not stand out from the rest of its
    images. Purple (objectness about 0.5 to the head, as uncertain as an unseen stuff class such as sky) is
    mapped by the plain steps; yellow (about 0.8: surely a thing, like coins filling their photo) by the
    object path. Either way the field is found. The negatives are one plain colour far from the field's."""
    rng = np.random.default_rng(3)

    def field() -> np.ndarray:
        image = rng.integers(100, 130, size=(SIZE, SIZE, 3)).astype(np.uint8)
        image[4:] = colour
        return image

    positives = [TaggedImage(field()) for _ in range(4)]
    negatives = [np.full((SIZE, SIZE, 3), elsewhere, np.uint8) for _ in range(3)]
    fitted = CosegPrior(features=colour_features, bank_pool=1, objectness=COLOUR_HEAD).fit("field", positives,
                                                                                           negatives)
    top_objectness, lift, top_score = np.mean([fitted._top_cells(p) for p in fitted.positives], axis=0)
    assert lift < THING_LIFT and top_score >= CLEAR_RECURRENCE
    assert top_objectness >= THING_CUT and (top_objectness >= THING_SURE) == thing
    assert fitted.is_thing == thing
    truth = np.zeros((SIZE, SIZE), bool)
    truth[4:] = True
    assert _iou(fitted(field()) > 0.5, truth) > 0.8


def test_the_head_must_match_the_prior_and_its_descriptors():
    with pytest.raises(ValueError, match="tap weights"):
        CosegPrior(features=colour_features, tap_weights=(1.0, 1.0, 1.0), objectness=COLOUR_HEAD)
    with pytest.raises(ValueError, match="3-channel descriptors, got 4"):
        COLOUR_HEAD(torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="no objectness head"):
        CosegPrior(features=colour_features).cell_objectness(torch.zeros(3, 2, 2))


def test_training_cells_keep_pure_cells_only():
    desc = torch.arange(2 * 2 * 2, dtype=torch.float32).view(2, 2, 2)  # (C=2, 2x2 grid) on a 4x4 image
    thing, stuff = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    thing[:2, :2] = True  # cell (0, 0): all thing
    stuff[2:, :] = True  # cells (1, 0), (1, 1): all stuff
    thing[0, 2] = True  # cell (0, 1): a quarter thing, the rest unlabelled: left out
    cells, targets = training_cells(desc, thing, stuff)
    assert targets.tolist() == [1.0, 0.0, 0.0]
    assert cells.tolist() == [[0.0, 4.0], [2.0, 6.0], [3.0, 7.0]]


def test_fit_learns_a_separable_split_and_round_trips(tmp_path):
    gen = torch.Generator().manual_seed(0)
    images = []
    for _ in range(4):
        pixels = np.zeros((8, 8, 3), np.uint8)
        thing, stuff = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
        thing[:, :4], stuff[:, 4:] = True, True
        images.append((pixels, thing, stuff))

    def features(pixels, weights):  # things lean along +x0, stuff along -x0, noise elsewhere
        desc = torch.randn(5, 4, 4, generator=gen) * 0.3
        desc[0, :, :2] += 1.0
        desc[0, :, 2:] -= 1.0
        return desc

    head = fit_objectness(images, features, backbone="toy", size=32, info={"things": ["a"]})
    probe = torch.zeros(5, 1, 2)
    probe[0, 0, 0], probe[0, 0, 1] = 1.0, -1.0
    p = head(probe)
    assert p[0, 0] > 0.9 and p[0, 1] < 0.1
    assert head.info["images"] == 4 and head.info["cells"] == 64 and head.info["thing_share"] == 0.5
    head.save(tmp_path / "head.safetensors")
    again = ObjectnessHead.load(tmp_path / "head.safetensors")
    assert torch.equal(again.weight, head.weight) and again.bias == pytest.approx(head.bias)
    assert (again.backbone, again.size, again.tap_weights, again.info) == ("toy", 32, (1.0, 1.0, 2.0), head.info)
    with pytest.raises(ValueError, match="both thing and stuff"):
        fit_head(torch.zeros(3, 2), torch.ones(3))


def test_a_missing_head_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors.*python -m hhn.priors.objectness") as raised:
        ObjectnessHead.load(tmp_path / "nope.safetensors")
    assert isinstance(raised.value, UserError)  # the CLI prints it as a message, not a traceback


def test_the_shipped_head_and_the_named_prior():
    head = ObjectnessHead.load(DEFAULT_HEAD)
    assert head.weight.shape == (472,) and (head.backbone, head.size, head.tap_weights) == (
        "efficientnet_lite0", 320, (1.0, 1.0, 2.0))
    assert head.info["things"] == list(MSRC_THINGS) and head.info["stuff"] == list(MSRC_STUFF)
    assert not set(head.info["exclude"]) & set(MSRC_THINGS + MSRC_STUFF)
    prior = build_tag_prior("coseg-objects")
    assert isinstance(prior, CosegPrior) and prior.contrast == "ratio" and prior.features.size == 320
    assert torch.equal(prior.objectness.weight, head.weight)
    for other in ("coseg-ratio", "gradcam"):  # a head they would ignore is refused, not dropped silently
        with pytest.raises(UserError, match="reads no objectness head"):
            build_tag_prior(other, objectness=DEFAULT_HEAD)


def test_a_class_with_a_user_mask_keeps_the_plain_steps():
    """A user mask gives exact examples: the class is not mapped as an object in clutter (the plain steps
    learn from the mask), and the masked image's prior is its mask."""
    rng = np.random.default_rng(3)
    (first, masks), *others = [_clutter(rng, {RED: 1}) for _ in range(3)]
    negatives = [_clutter(rng, {})[0] for _ in range(3)]
    prior = CosegPrior(features=colour_features, bank_pool=1, objectness=COLOUR_HEAD)
    red = prior.fit("red", [TaggedImage(first, masks[RED].astype(np.float32)),
                            *(TaggedImage(im) for im, _ in others)], negatives)
    assert not red.is_thing
    query, truth = _clutter(rng, {RED: 2})
    assert _iou(red(query) > 0.5, truth[RED]) > 0.8
