"""The proposal options: one dataclass for wfss label, the widget, the child process and the engine."""

from __future__ import annotations

import dataclasses

import pytest

from hhn.config import DecisionRule
from hhn.errors import UserError
from napari_wfss.cli import build_parser
from napari_wfss.engine import Engine
from napari_wfss.options import ProposalOptions, settings_differences


def _label_options(*flags):
    args = build_parser().parse_args(["label", "f", "--tags", "t.csv", "--out", "o", *flags])
    return ProposalOptions.from_args(args)


def test_json_round_trip_is_equal():
    options = ProposalOptions(model="x.safetensors", device="cpu", shots=2, batch_size=3, threshold=0.0,
                              decision="0.5,0.6,trim:1/0.5/0", snap=False, refine_supports=True,
                              tag_prior="coseg-ratio")
    assert ProposalOptions.from_json(options.to_json()) == options
    assert ProposalOptions.from_json(ProposalOptions().to_json()) == ProposalOptions()


@pytest.mark.parametrize("text, message", [
    ('{"shots": 0}', "at least 1"), ('{"threshold": 1.5}', "threshold"), ('{"device": "tpu"}', "device"),
    ('{"decision": "0.5"}', "decision rule"), ('{"colour": 1}', "unknown"), ('{"shots": "5"}', "wrong type"),
    ('{"snap": 1}', "wrong type"), ('[1]', "JSON object"), ("{", "not JSON"), ('{"tag_prior": 3}', "wrong type"),
    ('{"tag_prior": "sam"}', "tag prior must be one of coseg, ")])
def test_bad_records_are_clear_errors(text, message):
    with pytest.raises(UserError, match=message):  # OptionsError, or the rule parser's UserError
        ProposalOptions.from_json(text)


def test_the_command_line_gives_the_options():
    assert _label_options() == ProposalOptions()
    got = _label_options("--model", "m", "--threshold", "0", "--no-snap", "--refine-supports", "--shots", "2",
                         "--decision", "argmax", "--device", "cpu", "--batch-size", "7")
    assert got == ProposalOptions("m", "cpu", 2, 7, 0.0, "argmax", False, True)
    assert _label_options("--tag-prior", "coseg-ratio").tag_prior == "coseg-ratio"
    with pytest.raises(SystemExit):  # argparse names the choices
        _label_options("--tag-prior", "sam")


@pytest.mark.parametrize("threshold", [None, 0.0, 0.35, 1.0])
def test_threshold_means_one_thing_from_the_command_line_and_in_the_engine(threshold):
    flags = [] if threshold is None else ["--threshold", str(threshold)]
    options = _label_options("--model", "preset:wfss-lite0", "--device", "cpu", *flags)
    assert options.threshold == threshold
    engine = Engine.from_options(options)
    shipped = engine.load().config.decision
    want_rule = dataclasses.replace(shipped, threshold=threshold) if threshold not in (None, 0.0, 1.0) else shipped
    assert engine.load().decision == want_rule
    assert engine.threshold == (shipped.threshold if threshold is None else threshold)


def test_engine_options_are_the_engine_arguments():
    options = ProposalOptions(decision="argmax", threshold=0.4)
    kwargs = options.engine_kwargs()
    assert kwargs["decision"] == DecisionRule() and kwargs["threshold"] == 0.4
    with pytest.raises(UserError, match="threshold"):
        Engine(threshold=-0.1)


def test_the_tag_prior_option_picks_the_prior_the_engine_fits():
    """``tag_prior`` replaces the model's own prior (the preset's reads no objectness head), is one of the
    settings recorded per proposal, and cannot be given together with a ready prior."""
    from hhn.priors.coseg import CosegPrior

    own = Engine.from_options(ProposalOptions(model="preset:wfss-lite0", device="cpu"))
    chosen = Engine.from_options(ProposalOptions(model="preset:wfss-lite0", device="cpu", tag_prior="coseg-objects"))
    assert own.settings()["tag_prior"] is None and chosen.settings()["tag_prior"] == "coseg-objects"
    assert settings_differences(own.settings(), chosen.settings()) == {"tag_prior": (None, "coseg-objects")}
    own_prior, chosen_prior = own.pipeline().prior, chosen.pipeline().prior
    assert isinstance(own_prior, CosegPrior) and isinstance(chosen_prior, CosegPrior)
    assert own_prior.objectness is None
    assert chosen_prior.objectness is not None and chosen_prior.contrast == "ratio"
    plain = Engine(model="preset:wfss-lite0", device="cpu", tag_prior="coseg").pipeline().prior
    assert isinstance(plain, CosegPrior) and plain.contrast == "difference" and plain.objectness is None
    with pytest.raises(UserError, match="not both"):
        Engine(prior=own_prior, tag_prior="coseg")
    with pytest.raises(UserError, match="tag prior must be one of"):
        Engine(tag_prior="sam")
