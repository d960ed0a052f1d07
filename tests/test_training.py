"""Training: a tiny run lowers the loss; checkpoints resume exactly; recipes and CLI guard rails."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from test_data import write_generic_dataset

from hhn.config import load_preset
from hhn.data.episodes import EpisodeSampler
from hhn.data.generic import GenericDataset
from hhn.errors import UserError
from hhn.network import HHN
from hhn.priors.coseg import CosegPrior
from hhn.priors.features import DenseFeatures
from hhn.training.banks import FeatureBank, TargetBank
from hhn.training.loop import Trainer, learning_rate
from hhn.training.priors import PriorBank
from hhn.training.recipes import RECIPES, get_recipe

SIZE = 64  # network input for tests: stride-8 grid 8x8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    root = write_generic_dataset(tmp_path_factory.mktemp("synth"), n_images=12, size=48)
    dataset = GenericDataset(root)
    recipe = replace(get_recipe("ours"), batch_size=2, lr=3e-3)
    config = recipe.apply_to(replace(load_preset("wfss-lite0"), image_size=(SIZE, SIZE)))
    model = HHN(config, pretrained_backbone=True)
    classes = ("square", "disk")
    names = sorted({n for c in classes for n in dataset.images_with(c)})
    features = FeatureBank(model, dataset, names)
    targets = TargetBank(dataset, config.image_size)
    priors = PriorBank(dataset, CosegPrior(features=DenseFeatures(size=SIZE)), config.geometry.head_size)
    sampler = EpisodeSampler(dataset, classes=classes, shots=1, seed=0)
    return dataset, recipe, config, features, targets, priors, sampler


def _trainer(setup, out, steps, model=None, amp=False):
    dataset, recipe, config, features, targets, priors, sampler = setup
    if model is None:
        torch.manual_seed(1)
        model = HHN(config, pretrained_backbone=True)
    return Trainer(model, recipe, out, features, targets, priors,
                   lambda step: [sampler.episode(2 * step + i) for i in range(2)], steps, seed=0,
                   log=lambda s: None, checkpoint_every=5, amp=amp)


def test_banks_shapes_and_ranges(setup):
    dataset, recipe, config, features, targets, priors, sampler = setup
    name = dataset.images_with("square")[0]
    taps = features.features(name)
    assert all(t.dtype == torch.float16 and t.ndim == 3 for t in taps)
    target = targets.target(name, "square")
    assert target.shape == (SIZE, SIZE) and set(np.unique(target)) <= {0, 1, 255} and (target == 1).any()
    prior = priors.prior(name, "square")
    assert prior.shape == config.geometry.head_size and prior.dtype == np.float32
    assert prior.min() >= 0.0 and prior.max() <= 1.0


def test_prior_bank_round_trip_keeps_every_class_of_an_image(setup, tmp_path):
    dataset, recipe, config, features, targets, priors, sampler = setup
    both = sorted(set(dataset.images_with("square")) & set(dataset.images_with("disk")))
    assert both, "the synthetic set must have an image with both classes"
    pairs = [(both[0], "square"), (both[0], "disk"), (dataset.images_with("square")[0], "square")]
    priors.fill(pairs)
    priors.save(tmp_path / "priors.npz")
    assert [f.name for f in tmp_path.iterdir()] == ["priors.npz"]  # written atomically, no temporary left
    again = PriorBank(dataset, priors.tag_prior, config.geometry.head_size)
    assert again.load(tmp_path / "priors.npz")
    for name, cls in pairs:
        assert np.abs(again._maps[(name, cls)] - priors.prior(name, cls)).max() < 1e-3  # float16 storage
    other = PriorBank(dataset, priors.tag_prior, config.geometry.head_size, positives=1)
    assert not other.load(tmp_path / "priors.npz") and not other._maps  # other settings: not reused


@pytest.mark.slow
def test_tiny_training_run_lowers_the_loss(setup, tmp_path):
    losses = _trainer(setup, tmp_path / "run", steps=40).run()
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert np.isfinite(losses).all()
    assert last < 0.8 * first, (first, last)


def test_resume_continues_exactly(setup, tmp_path):
    straight = _trainer(setup, tmp_path / "a", steps=10).run()
    first = _trainer(setup, tmp_path / "b", steps=10)
    first.run(until=5)  # as if killed after the step-5 checkpoint
    resumed = _trainer(setup, tmp_path / "b", steps=10)
    assert resumed.resume() and resumed.step == 5
    rest = resumed.run()
    np.testing.assert_allclose(rest, straight[5:], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_mixed_precision_run_tracks_float32_and_lowers_the_loss(setup, tmp_path):
    # on CPU, AMP is bfloat16 autocast: the same code path as CUDA's float16 minus the loss scaler
    full = _trainer(setup, tmp_path / "fp32", steps=1)
    mixed = _trainer(setup, tmp_path / "amp", steps=40, amp=True)
    batch = _first_batch(setup, full)
    with torch.no_grad():
        exact, approx = float(full.loss(batch)), float(mixed.loss(batch))
    assert approx == pytest.approx(exact, rel=0.05) and approx != exact  # bfloat16 really ran
    losses = mixed.run()
    assert np.isfinite(losses).all() and np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    state = torch.load(mixed.state_path, weights_only=True)
    assert "scaler" in state  # resumable with the loss scaler's state (empty when the scaler is off)


def test_batch_moves_every_tensor_to_the_device(setup, tmp_path):
    moved = _first_batch(setup, _trainer(setup, tmp_path / "run", steps=1)).to("meta")
    tensors = [*moved.query_feats, *moved.support_feats, moved.query_prior, moved.support_prior,
               moved.support_weight, moved.query_target, moved.support_target]
    assert all(t.device.type == "meta" for t in tensors)


def test_sinkhorn_runs_outside_autocast(monkeypatch):
    # CUDA autocast would cast the solver's float64 einsums to float16; CPU autocast leaves einsum alone, so
    # check the mechanism: the solver is called with autocast off, and the plan is the plain one.
    import hhn.transport as transport
    from hhn.config import SinkhornSettings

    seen, solver = [], transport.sinkhorn

    def recording(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return solver(*args, **kwargs)

    monkeypatch.setattr(transport, "sinkhorn", recording)
    attention = torch.rand(2, 6, 9, generator=torch.Generator().manual_seed(0))
    exact = transport.transport_plan(attention, SinkhornSettings())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_amp = transport.transport_plan(attention, SinkhornSettings())
    assert seen == [False, False] and torch.equal(exact, under_amp)


def _first_batch(setup, trainer):
    from hhn.training.loop import make_batch

    return make_batch(trainer.sample(0), trainer.features, trainer.targets, trainer.priors, trainer.recipe,
                      np.random.default_rng(0))


def test_backbone_is_not_trained(setup, tmp_path):
    trainer = _trainer(setup, tmp_path / "run", steps=2)
    before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    trainer.run()
    after = trainer.model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_recipes_differ_where_documented():
    paper, ours = RECIPES["paper"], RECIPES["ours"]
    assert paper.norm_penalty == 1e-4 and ours.norm_penalty == 0.0
    assert not paper.ignore_void and ours.ignore_void
    config = load_preset("wfss-lite0")
    assert not paper.apply_to(config).grad_through_fusion and ours.apply_to(config).mask_support_features
    assert learning_rate(paper, 500, 1000) == paper.lr
    assert learning_rate(ours, 0, 1000) == pytest.approx(ours.lr)
    assert learning_rate(ours, 1000, 1000) == pytest.approx(0.05 * ours.lr)
    with pytest.raises(UserError, match="unknown training recipe"):
        get_recipe("fast")
    tags_only = RECIPES["ours-tags"]
    assert tags_only.support_mask_prob == 0.0 and ours.support_mask_prob == 0.5
    assert replace(tags_only, name="ours", support_mask_prob=ours.support_mask_prob) == ours
    in_decoder = RECIPES["ours-prior-in-decoder"]
    assert in_decoder.apply_to(config).prior_in_decoder and not ours.apply_to(config).prior_in_decoder
    assert replace(in_decoder, name="ours", prior_in_decoder=False) == ours


def test_train_cli_offers_every_recipe():
    from napari_wfss.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    recipe = next(a for a in train._actions if a.dest == "recipe")
    assert set(recipe.choices) == set(RECIPES)


def test_train_cli_requires_held_out_classes(tmp_path):
    from hhn.training.cli import run_train_cli
    from napari_wfss.cli import build_parser

    root = write_generic_dataset(tmp_path / "synth")
    args = build_parser().parse_args(["train", "--data", str(root), "--out", str(tmp_path / "o"), "--steps", "1",
                                      "--device", "cpu"])
    with pytest.raises(UserError, match="held-out"):
        run_train_cli(args)
