"""HHN network: config/geometry, backbones, parameter counts (spec 4), dependency facts (spec 1.9),
gradient flow (spec 1.10), the split query path, determinism, and the 400x400 shape trace (spec 1.12)."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
import torchvision

from hhn.backbones import BACKBONES
from hhn.config import SUPPORTED_BACKBONES, HHNConfig, list_presets, load_preset
from hhn.correlation import NORM_EPS, correlation_pyramid, swap_images
from hhn.encoder4d import CenterPivotConv4d, GroupNormReLUFunction, SqueezeEncoder, channels_last_4d
from hhn.errors import UserError
from hhn.network import HHN, ClassEmbeddings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = (64, 64)


def small(preset: str, **changes) -> HHNConfig:
    return dataclasses.replace(load_preset(preset), image_size=SMALL, **changes)


def text_for(batch: int, seed: int = 0) -> ClassEmbeddings:
    gen = torch.Generator().manual_seed(seed)
    return ClassEmbeddings(*(F.normalize(torch.randn(batch, 512, generator=gen), dim=-1) for _ in range(3)))


def inputs(batch: int, size=SMALL, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    return (torch.randn(batch, 3, h, w, generator=gen), torch.randn(batch, 3, h, w, generator=gen),
            (torch.rand(batch, h, w, generator=gen) > 0.5).float(),
            (torch.rand(batch, h, w, generator=gen) > 0.5).float())


@pytest.fixture(scope="module")
def resnet_small():
    torch.manual_seed(0)
    return HHN(small("tlg-resnet50-pascal")).eval()


# ---------------------------------------------------------------------------------------- config
def test_presets_round_trip_through_json():
    assert set(list_presets()) >= {"tlg-resnet50-pascal", "tlg-resnet50-coco", "tlg-vgg16-pascal",
                                   "tlg-vgg16-coco", "wfss-lite0"}
    for name in list_presets():
        config = load_preset(name)
        assert config.name == name
        assert HHNConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_paper_presets_keep_both_switches_off_and_ours_turns_them_on():
    for name in ("tlg-resnet50-pascal", "tlg-resnet50-coco", "tlg-vgg16-pascal", "tlg-vgg16-coco"):
        c = load_preset(name)
        assert (c.image_size, c.use_text, c.mask_support_features, c.grad_through_fusion) == ((400, 400), True,
                                                                                              False, False)
        assert (c.sinkhorn.reg, c.sinkhorn.max_iter, c.sinkhorn.stop_thr) == (0.5, 1000, 1e-9)
        assert c.text_template == "a clean origami {}." and c.clip_model == "ViT-B-32"
    lite = load_preset("wfss-lite0")
    assert (lite.backbone, lite.image_size, lite.use_text) == ("efficientnet_lite0", (256, 256), False)
    assert lite.mask_support_features and lite.grad_through_fusion


def test_geometry_is_derived_from_the_backbone():
    g = load_preset("tlg-resnet50-pascal").geometry
    assert (g.grid8, g.grid16, g.grid32) == ((50, 50), (25, 25), (13, 13))
    assert (g.tokens, g.grid8_cells, g.text_cells, g.head_size) == (50, 2500, 625, (100, 100))
    assert load_preset("tlg-vgg16-coco").geometry.grid32 == (12, 12)  # VGG floors: pool5 is 12x12
    lite = load_preset("wfss-lite0").geometry
    assert (lite.grid8, lite.grid32, lite.tokens, lite.text_grid, lite.head_size) == \
        ((32, 32), (8, 8), 32, (16, 16), (64, 64))
    wide = dataclasses.replace(load_preset("wfss-lite0"), image_size=(256, 384)).geometry
    assert (wide.grid8, wide.tokens, wide.head_size) == ((32, 48), 32, (64, 96))


def test_config_errors_are_user_errors():
    base = load_preset("wfss-lite0")
    with pytest.raises(UserError, match="multiples of 16"):
        dataclasses.replace(base, image_size=(300, 320))
    with pytest.raises(UserError, match="unknown backbone"):
        dataclasses.replace(base, backbone="resnet101")
    with pytest.raises(UserError, match="unknown fields"):
        HHNConfig.from_dict({**base.to_dict(), "dropout": 0.2})
    with pytest.raises(UserError, match="available: .*wfss-lite0"):
        load_preset("nope")
    with pytest.raises(UserError, match="unknown tag_prior 'clip'"):
        dataclasses.replace(base, tag_prior="clip")
    assert HHNConfig.from_dict({**base.to_dict(), "tag_prior": "coseg-ms"}).tag_prior == "coseg-ms"
    old = base.to_dict()
    del old["tag_prior"]  # a model.json written before the field existed
    assert HHNConfig.from_dict(old).tag_prior is None
    vgg = load_preset("tlg-vgg16-pascal")  # 272 = 16 x 17: pool5 8x8 squeezes to 1, conv5 17x17 to 2
    with pytest.raises(UserError, match="incompatible feature grids"):
        dataclasses.replace(vgg, image_size=(272, 272)).geometry  # noqa: B018


def test_registry_matches_config_names():
    assert tuple(BACKBONES) == SUPPORTED_BACKBONES


# ---------------------------------------------------------------------------------------- counts
def _count(model, prefix=""):
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


@pytest.mark.parametrize(("preset", "backbone", "encoder", "parts"), [
    ("tlg-resnet50-pascal", 23_508_032, 2_314_336, (167_584, 171_520, 202_688)),
    ("tlg-vgg16-pascal", 14_714_688, 2_310_560, (167_008, 169_120, 201_888)),
])
def test_parameter_counts_match_spec_section_4(preset, backbone, encoder, parts):
    with torch.device("meta"):
        model = HHN(load_preset(preset))
    total = _count(model)
    assert _count(model, "backbone.") == backbone  # torchvision without fc / classifier
    assert _count(model, "correlation_encoder.") == encoder
    enc = model.correlation_encoder
    assert tuple(_count(b) for b in (enc.squeeze_deep, enc.squeeze_middle, enc.squeeze_shallow)) == parts
    assert _count(enc.mix_deep_middle) == _count(enc.mix_middle_shallow) == 886_272
    assert tuple(_count(m) for m in (model.decoder.coarse, model.decoder.fine, model.decoder.prior_fusion)) == \
        (221_376, 38_082, 62)
    assert (_count(model.transport.self_attention), _count(model.transport.cross_attention),
            _count(model.transport.expand), _count(model.transport.norm)) == (49_280, 65_536, 125_000, 256)
    assert (_count(model.text.to_map), _count(model.text.merge_fg_bg)) == (320_625, 3)
    assert (_count(model.aggregation.fuse), _count(model.aggregation.cross_merge)) == (49_280, 32_768)
    if preset.startswith("tlg-resnet50"):
        # spec: non-backbone 3,675,740 excluding the unused convs (4,200,940 with them)
        assert total - backbone == 3_675_740
        assert [_count(model.aggregation.project[k]) for k in ("from512", "from1024", "from2048")] == \
            [65_664, 131_200, 262_272]
    else:
        # spec: 3,672,364 incl. the unused 1024/2048 -> 128 convs (393,472) and 25->8 / 23->8 convs (400)
        assert total - backbone == 3_672_364 - 393_472 - 400
        assert list(model.aggregation.project) == ["from512"]


# ---------------------------------------------------------------------------------------- backbones
def test_resnet_taps_are_pre_relu_block_outputs_of_torchvision():
    torch.manual_seed(0)
    ours = BACKBONES["resnet50"].build(SMALL)
    reference = torchvision.models.resnet50().eval()
    reference.load_state_dict(ours.state_dict(), strict=False)
    x = torch.randn(1, 3, *SMALL)
    with torch.no_grad():
        taps = ours(x)
        stem = reference.layer1(reference.maxpool(reference.relu(reference.bn1(reference.conv1(x)))))
        l2 = reference.layer2(stem)
        l3 = reference.layer3(l2)
        l4 = reference.layer4(l3)
    assert [t.shape[1] for t in taps] == list(BACKBONES["resnet50"].tap_channels)
    for tap, ref in ((taps[3], l2), (taps[9], l3), (taps[12], l4)):
        torch.testing.assert_close(F.relu(tap), ref)
    assert (taps[12] < 0).any()  # before the final ReLU


def test_vgg_taps_are_the_spec_modules_pre_relu():
    torch.manual_seed(0)
    ours = BACKBONES["vgg16"].build(SMALL)
    reference = torchvision.models.vgg16().features.eval()
    reference.load_state_dict(ours.features.state_dict())
    x = torch.randn(1, 3, *SMALL)
    with torch.no_grad():
        taps = ours(x)
        for tap, index in zip(taps, (17, 19, 21, 24, 26, 28, 30)):
            torch.testing.assert_close(tap, reference[:index + 1](x.clone()))
    assert (taps[0] < 0).any()


def test_efficientnet_lite0_taps_follow_the_metadata():
    spec = BACKBONES["efficientnet_lite0"]
    with torch.no_grad():
        taps = spec.build((96, 128))(torch.randn(1, 3, 96, 128))
    assert [t.shape[1] for t in taps] == list(spec.tap_channels)
    assert [t.shape[-2:] for t in taps] == [(96 // s, 128 // s) for s in spec.tap_strides]
    assert spec.pyramid_groups() == ((8, 9, 10, 11, 12), (2, 3, 4, 5, 6, 7), (0, 1))


# ---------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("preset", ["tlg-vgg16-coco", "wfss-lite0"])
def test_small_forward_shapes_and_determinism(preset):
    torch.manual_seed(0)
    config = small(preset)
    model = HHN(config).eval()
    q, s, qp, sp = inputs(2)
    text = text_for(2) if config.use_text else None
    with torch.no_grad():
        first = model(q, s, qp, sp, text)
        second = model(q, s, qp, sp, text)
    assert first[0].shape == first[1].shape == (2, 2, *SMALL)
    assert torch.isfinite(first[0]).all()
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_resnet_determinism_and_batch_independence(resnet_small):
    q, s, qp, sp = inputs(2)
    text = text_for(2)
    with torch.no_grad():
        both = resnet_small(q, s, qp, sp, text)
        again = resnet_small(q, s, qp, sp, text)
        single = resnet_small(q[1:], s[1:], qp[1:], sp[1:], ClassEmbeddings(*(t[1:] for t in text)))
    assert torch.equal(both[0], again[0])
    torch.testing.assert_close(both[0][1:], single[0], rtol=1e-4, atol=1e-5)


def test_correlation_is_the_clamped_cosine_and_swaps_with_its_arguments():
    gen = torch.Generator().manual_seed(0)
    a = [torch.randn(2, 8, 5, 6, generator=gen), torch.randn(2, 8, 3, 3, generator=gen)]
    b = [torch.randn(2, 8, 5, 6, generator=gen), torch.randn(2, 8, 3, 3, generator=gen)]
    groups = ((1,), (0,))
    pyramid = correlation_pyramid(a, b, groups)
    for level, group in zip(pyramid, groups):
        unit_a, unit_b = (f[group[0]] / (f[group[0]].norm(dim=1, keepdim=True) + NORM_EPS) for f in (a, b))
        expected = torch.einsum("bcij,bckl->bijkl", unit_a, unit_b).clamp(min=0).unsqueeze(1)
        torch.testing.assert_close(level, expected)
        assert level.permute(0, 2, 3, 4, 5, 1).is_contiguous()  # channels-last, as the encoder wants
    for direct, swapped in zip(correlation_pyramid(b, a, groups), swap_images(pyramid)):
        torch.testing.assert_close(direct, swapped)
    assert pyramid[1].min() == 0 and pyramid[1].max() <= 1


def _center_pivot_by_loops(conv: CenterPivotConv4d, x: torch.Tensor) -> torch.Tensor:
    """The definition: at pivot (k, m) of the second image, conv ``first`` over the first image's dims;
    at position (i, j) of the first image, strided conv ``second`` over the second image's dims; sum."""
    s = conv.stride
    pivots_h, pivots_w = range(0, x.shape[4], s), range(0, x.shape[5], s)
    rows = []
    for i in range(x.shape[2]):
        cols = []
        for j in range(x.shape[3]):
            second = conv.second(x[:, :, i, j])
            cols.append(torch.stack([torch.stack([conv.first(x[:, :, :, :, k, m])[:, :, i, j] + second[:, :, a, b]
                                                  for b, m in enumerate(pivots_w)], dim=-1)
                                     for a, k in enumerate(pivots_h)], dim=-2))
        rows.append(torch.stack(cols, dim=2))
    return torch.stack(rows, dim=2)


@pytest.mark.parametrize(("kernel", "stride", "second_dims"), [
    (3, 1, (7, 6)), (3, 2, (7, 6)), (3, 3, (7, 6)), (5, 4, (10, 9)),  # second image conv as a 2D conv
    (3, 1, (2, 2)), (3, 2, (3, 3)), (3, 1, (3, 2)), (5, 4, (4, 5)),  # ... as a matrix product (grid <= kernel)
])
def test_center_pivot_conv4d_matches_its_loop_definition(kernel, stride, second_dims):
    torch.manual_seed(0)
    conv = CenterPivotConv4d(2, 3, kernel=kernel, stride=stride).double()
    x = torch.randn(2, 2, 4, 5, *second_dims, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, 4, 5, *(-(-d // stride) for d in second_dims), dtype=torch.float64)
    out = conv(x)
    assert out.permute(0, 2, 3, 4, 5, 1).is_contiguous()  # stored channels-last
    grads = torch.autograd.grad((out * weights).sum(), [x, *conv.parameters()])
    expected = _center_pivot_by_loops(conv, x)
    expected_grads = torch.autograd.grad((expected * weights).sum(), [x, *conv.parameters()])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # the layout of the input does not matter
        torch.testing.assert_close(conv(channels_last_4d(x)), out, rtol=0, atol=0)
        torch.testing.assert_close(conv(x.contiguous()), out, rtol=0, atol=0)


@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_fused_group_norm_relu_equals_torch_group_norm_then_relu(offset):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 50, 8, generator=gen, dtype=torch.float64) + offset).requires_grad_()
    weight = torch.randn(8, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(8, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 50, 8, generator=gen, dtype=torch.float64)
    ours = GroupNormReLUFunction.apply(x, weight, bias, 4, 1e-5)
    reference = F.relu(F.group_norm(x.transpose(1, 2), 4, weight, bias, 1e-5)).transpose(1, 2)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad((ours * upstream).sum(), [x, weight, bias])
    want = torch.autograd.grad((reference * upstream).sum(), [x, weight, bias])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)
    assert torch.autograd.gradcheck(lambda *t: GroupNormReLUFunction.apply(*t, 4, 1e-5),
                                    (x[:1, :6].detach().requires_grad_(), weight, bias))


def test_squeeze_encoder_output_does_not_depend_on_the_input_layout():
    torch.manual_seed(0)
    encoder = SqueezeEncoder([1, 2, 1]).eval()
    gen = torch.Generator().manual_seed(1)
    feats = [torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 4, 4, 4, generator=gen),
             torch.randn(1, 4, 4, 4, generator=gen), torch.randn(1, 4, 2, 2, generator=gen)]
    pyramid = correlation_pyramid(feats, [f.flip(-1) for f in feats], ((3,), (1, 2), (0,)))
    with torch.no_grad():
        channels_last = encoder(pyramid)
        contiguous = encoder([p.contiguous() for p in pyramid])
    assert channels_last.shape == (1, 128, 8, 8) and channels_last.is_contiguous()
    torch.testing.assert_close(channels_last, contiguous, rtol=0, atol=0)


def test_query_only_path_equals_the_full_forward(resnet_small):
    q, s, qp, sp = inputs(1, seed=3)
    text = text_for(1)
    with torch.no_grad():
        full_query, _ = resnet_small(q, s, qp, sp, text)
        head = resnet_small.forward_query(resnet_small.extract_features(q), resnet_small.extract_features(s),
                                          qp, text)
    assert head.shape == (1, 2, 16, 16)
    torch.testing.assert_close(F.interpolate(head, SMALL, mode="bilinear", align_corners=True), full_query,
                               rtol=0, atol=0)


def test_dependency_facts_of_the_released_model(resnet_small):
    q, s, qp, sp = inputs(1, seed=1)
    text = text_for(1)
    with torch.no_grad():
        base = resnet_small(q, s, qp, sp, text)
        other_support_prior = resnet_small(q, s, qp, 1 - sp, text, support_mask=1 - sp)
        other_query_prior = resnet_small(q, s, 1 - qp, sp, text)
        other_support_image = resnet_small(q, s.flip(-1), qp, sp, text)
    assert torch.equal(other_support_prior[0], base[0])  # support prior / mask never reach the query
    assert not torch.equal(other_support_prior[1], base[1])
    assert not torch.equal(other_query_prior[0], base[0])
    assert torch.equal(other_query_prior[1], base[1])  # the query prior never reaches the support
    assert not torch.equal(other_support_image[0], base[0])


def test_masking_support_features_makes_the_support_mask_matter():
    torch.manual_seed(0)
    model = HHN(small("tlg-resnet50-pascal", mask_support_features=True)).eval()
    q, s, qp, sp = inputs(1, seed=2)
    text = text_for(1)
    with torch.no_grad():
        base = model(q, s, qp, sp, text)
        flipped = model(q, s, qp, 1 - sp, text)
        mask_wins = model(q, s, qp, 1 - sp, text, support_mask=sp)
    assert not torch.equal(flipped[0], base[0])
    assert torch.equal(mask_wins[0], base[0])  # an explicit support mask replaces the prior


def test_prior_in_decoder_feeds_the_prior_to_the_first_decoder_conv():
    torch.manual_seed(0)
    late = HHN(small("wfss-lite0")).eval()
    early = HHN(small("wfss-lite0", prior_in_decoder=True)).eval()
    assert late.decoder.coarse[0].weight.shape[1] == 128 and early.decoder.coarse[0].weight.shape[1] == 129
    q, s, qp, sp = inputs(1, seed=3)
    fused = torch.randn(1, 128, 8, 8)
    with torch.no_grad():
        for model in (late, early):
            # the final 1x1 fusion sees the prior either way; zero it to isolate what the convs see
            model.decoder.prior_fusion[0].weight[:, 2].zero_()
        outputs = [(m.decoder(fused, qp), m.decoder(fused, 1 - qp)) for m in (late, early)]
        assert torch.equal(*outputs[0])  # without the switch only the (now blind) fusion reads the prior
        assert not torch.equal(*outputs[1])  # with it, the 3x3 convs read it
        query, support = early(q, s, qp, sp, support_mask=sp)
    assert query.shape == support.shape == (1, 2, *SMALL)


def test_text_requirements():
    torch.manual_seed(0)
    q, s, qp, sp = inputs(1)
    lite = HHN(small("wfss-lite0")).eval()
    with torch.no_grad():
        assert torch.equal(lite(q, s, qp, sp)[0], lite(q, s, qp, sp, text_for(1))[0])
    with_text = HHN(small("tlg-vgg16-pascal")).eval()
    with pytest.raises(ValueError, match="uses CLIP text"):
        with_text(q, s, qp, sp)
    with torch.no_grad():
        assert not torch.equal(with_text(q, s, qp, sp, text_for(1))[0], with_text(q, s, qp, sp, text_for(1, 7))[0])


def _params_with_loss_grad(model: HHN, text) -> tuple[set[str], int]:
    model.train()
    assert not model.backbone.training
    model.zero_grad(set_to_none=True)
    q, s, qp, sp = inputs(2, seed=4)
    target = (torch.rand(2, *SMALL, generator=torch.Generator().manual_seed(5)) > 0.5).long()
    query_logits, support_logits = model(q, s, qp, sp, text)
    loss = 1.4 * F.cross_entropy(query_logits, target) + 0.6 * F.cross_entropy(support_logits, target)
    loss.backward()
    named = {n: p for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    return set(named), sum(p.numel() for p in named.values())


def test_gradient_flow_of_the_released_model(resnet_small):
    names, count = _params_with_loss_grad(resnet_small, text_for(2))
    resnet_small.eval()
    assert count == 2_573_856  # spec 1.10: encoder + D1 + D2 + fusion head only
    assert all(n.startswith(("correlation_encoder.", "decoder.")) for n in names)


def test_grad_through_fusion_reaches_ha_ht_and_text():
    torch.manual_seed(0)
    model = HHN(small("wfss-lite0", use_text=True, grad_through_fusion=True))
    names, count = _params_with_loss_grad(model, text_for(2))
    non_backbone = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
    # Everything but the attention parts that only shape the (constant) transport plan:
    # the self-attention (49,280) and the transport attention's query/key (2 x 16,384).
    assert count == non_backbone - 49_280 - 32_768
    assert {"aggregation.project.from320.weight", "aggregation.project.from40.weight", "text.to_map.weight",
            "text.merge_fg_bg.weight", "transport.norm.weight", "transport.expand.weight"} <= names
    assert not any(n.startswith("backbone.") for n in names)


# ---------------------------------------------------------------------------------------- 400x400
def _trace(preset: str) -> dict[str, list[tuple]]:
    torch.manual_seed(0)
    model = HHN(load_preset(preset)).eval()
    shapes: dict[str, list[tuple]] = {}

    def hook(name):
        def record(module, args, output):
            ins = [tuple(a.shape) for a in (args[0] if isinstance(args[0], list) else args)
                   if isinstance(a, torch.Tensor)]
            outs = output if isinstance(output, (list, tuple)) else [output]
            shapes.setdefault(name, []).append((ins, [tuple(o.shape) for o in outs if o is not None]))
        return record

    for name in ("backbone", "correlation_encoder", "correlation_encoder.squeeze_deep",
                 "correlation_encoder.squeeze_middle", "correlation_encoder.squeeze_shallow",
                 "correlation_encoder.mix_deep_middle", "correlation_encoder.mix_middle_shallow",
                 "aggregation.fuse", "aggregation.cross_merge", "transport.self_attention",
                 "transport.cross_attention", "transport.expand", "transport.norm", "text.to_map",
                 "text.merge_fg_bg", "decoder.coarse", "decoder.fine", "decoder.prior_fusion"):
        model.get_submodule(name).register_forward_hook(hook(name))
    q, s, qp, sp = inputs(1, size=(400, 400))
    with torch.no_grad():
        shapes["output"] = [([], [tuple(t.shape) for t in model(q, s, qp, sp, text_for(1))])]
    return shapes


@pytest.mark.slow
def test_shape_trace_resnet50_400():
    t = _trace("tlg-resnet50-pascal")
    feats = t["backbone"][0][1]
    assert feats == [(1, 512, 50, 50)] * 4 + [(1, 1024, 25, 25)] * 6 + [(1, 2048, 13, 13)] * 3
    assert t["correlation_encoder"][0][0] == [(1, 3, 13, 13, 13, 13), (1, 6, 25, 25, 25, 25),
                                              (1, 4, 50, 50, 50, 50)]
    assert [t[f"correlation_encoder.{n}"][0][1][0] for n in ("squeeze_deep", "squeeze_middle", "squeeze_shallow",
                                                              "mix_deep_middle", "mix_middle_shallow")] == \
        [(1, 128, 13, 13, 2, 2), (1, 128, 25, 25, 2, 2), (1, 128, 50, 50, 2, 2), (1, 128, 25, 25, 2, 2),
         (1, 128, 50, 50, 2, 2)]
    assert [c[1][0] for c in t["correlation_encoder"]] == [(1, 128, 50, 50)] * 2
    _common_trace_checks(t)


@pytest.mark.slow
def test_shape_trace_vgg16_400():
    t = _trace("tlg-vgg16-pascal")
    assert t["backbone"][0][1] == [(1, 512, 50, 50)] * 3 + [(1, 512, 25, 25)] * 3 + [(1, 512, 12, 12)]
    assert t["correlation_encoder"][0][0] == [(1, 1, 12, 12, 12, 12), (1, 3, 25, 25, 25, 25),
                                              (1, 3, 50, 50, 50, 50)]
    assert t["correlation_encoder.squeeze_deep"][0][1][0] == (1, 128, 12, 12, 2, 2)
    _common_trace_checks(t)


def _common_trace_checks(t):
    assert [c[0][0] for c in t["aggregation.fuse"]] == [(1, 384, 50, 50)] * 2
    assert [c[0][0] for c in t["aggregation.cross_merge"]] == [(1, 256, 50, 50)] * 2
    assert [c[0][0] for c in t["transport.self_attention"]] == [(1, 50, 128)] * 2
    assert [c[1][0] for c in t["transport.cross_attention"]] == [(1, 50, 128)] * 2
    assert [(c[0][0], c[1][0]) for c in t["transport.expand"]] == [((1, 128, 50), (1, 128, 2500))] * 2
    assert [c[1][0] for c in t["transport.norm"]] == [(1, 128, 50, 50)] * 2
    assert [(c[0][0], c[1][0]) for c in t["text.to_map"]] == [((1, 512), (1, 625))] * 3
    assert t["text.merge_fg_bg"][0][0][0] == (1, 2, 25, 25)
    assert [(c[0][0], c[1][0]) for c in t["decoder.coarse"]] == [((1, 128, 50, 50), (1, 64, 50, 50))] * 2
    assert [(c[0][0], c[1][0]) for c in t["decoder.fine"]] == [((1, 64, 100, 100), (1, 2, 100, 100))] * 2
    assert [(c[0][0], c[1][0]) for c in t["decoder.prior_fusion"]] == [((1, 3, 100, 100), (1, 2, 100, 100))] * 2
    assert t["output"][0][1] == [(1, 2, 400, 400), (1, 2, 400, 400)]
