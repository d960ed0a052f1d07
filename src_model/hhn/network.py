"""HHN: the TLG network (HA, HT, HC, decoder + prior fusion head), checkpoint-exact in paper mode.

Data flow for one (query, support) pair (spec section 1; sizes for ResNet-50 at 400x400):

1. Backbone taps of both images (frozen, eval, no grad).
2. Correlation pyramids ``corr_q = corr(query -> support)`` and ``corr_s = corr(support -> query)``
   (``corr_q`` with the two position pairs swapped; recomputed, which is cheaper than re-laying out the
   swapped view for the encoder). The shared :class:`SqueezeEncoder` gives
   ``Hq = enc(corr_q)`` (query-aligned) and ``Hs = enc(corr_s)`` (support-aligned), (B, 128, 50, 50).
3. HA: 1x1 convs (one per channel count, shared) of the (low, mid, high) taps, mid/high resized to the
   stride-8 grid (bilinear, align_corners=True), concat -> ``aggregation.fuse`` -> Fs / Fq.
   Cross merge: ``Ms = merge([Fs; Hq])``, ``Mq = merge([Fq; Hs])``.
4. HT: row-mean tokens -> SelfAttention -> TransportAttention (Sinkhorn OT) -> Linear(tokens -> h8*w8)
   -> BN -> + pooled residual -> ReLU.
5. HC: ``Z = up2(down2(S') * text_map)`` (bilinear, align_corners=False, scale factors 0.5 / 2);
   support uses the "refine" text map, query the fg/bg merged map.
6. Decoder on ``Zs + Hs`` / ``Zq + Hq`` -> 2x upsample -> logits at 2 x grid8 -> fusion head with the
   image's prior -> (B, 2, 2*h8, 2*w8); ``forward`` upsamples to the input size (align_corners=True).

Quirks of the released code kept in paper mode (spec section 8), each marked ``QUIRK`` below:

- the query's HT residual uses the SUPPORT mid feature (as does the support's): support max-pools it,
  query average-pools it; the residual conv is HA's shared 1x1 conv of that channel count;
- the support's features are merged with the QUERY-aligned encoding and vice versa;
- the "cross" attention attends within one image, and its attention matrix is replaced by the OT
  plan (rows sum to 1/N); the self-attention pairs even tokens as keys and odd tokens as values;
- the text maps and HC run under ``no_grad`` (unless ``config.grad_through_fusion``), so HA/HT/HC get
  no loss gradient; neither the support prior nor any support mask reaches the query logits (unless
  ``config.mask_support_features``);
- VGG-16 projects low, mid, high and the residual with the same 512 -> 128 conv.

Layers of the released code that are never used are not created (``conv1024_512``, ``voc_conv_bach``,
``coco_conv_batch``, the overwritten first ``proj``, backbone ``fc``/``classifier``, and for VGG the
1024/2048 -> 128 convs); ``hhn.tlg_keys`` drops them from the authors' checkpoints.

Without text (``config.use_text`` false) the text maps are replaced by ones: Z = up2(down2(S')).

One deliberate difference from the released op order: the residual's 1x1 conv is applied before its
bilinear upsampling to 2 x grid8 instead of after (identical in exact arithmetic since both are
linear and the interpolation weights sum to 1; float32 differences ~1e-6; 16x cheaper).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hhn.backbones import BACKBONES
from hhn.config import HHNConfig
from hhn.correlation import correlation_pyramid, swap_images, weight_by_mask
from hhn.encoder4d import ENCODER_DIM, SqueezeEncoder
from hhn.transport import SelfAttention, TransportAttention

#: CLIP ViT-B/32 text-embedding width.
TEXT_DIM = 512
SELF_ATTENTION_HEADS = 8


class ClassEmbeddings(NamedTuple):
    """CLIP text embeddings of one class per batch element, each (B, 512) or (1, 512) float32,
    L2-normalised: ``fg`` (class name), ``refine`` (part description), ``bg`` (typical background)."""

    fg: torch.Tensor
    refine: torch.Tensor
    bg: torch.Tensor


class HeterogeneousAggregation(nn.Module):
    """HA (spec 1.6): per-channel-count 1x1 projections, the 384 -> 128 fuse conv and the cross merge."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.project = nn.ModuleDict({f"from{c}": nn.Conv2d(c, ENCODER_DIM, 1) for c in channels})
        self.fuse = nn.Conv2d(3 * ENCODER_DIM, ENCODER_DIM, 1)
        self.cross_merge = nn.Conv2d(2 * ENCODER_DIM, ENCODER_DIM, 1, bias=False)

    def project_tap(self, feature: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, 128, h, w) with the shared conv for C channels."""
        return self.project[f"from{feature.shape[1]}"](feature)

    def aggregate(self, low: torch.Tensor, mid: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """Three taps -> project -> mid/high resized to low's grid (align_corners=True) -> fuse:
        (B, 128, h8, w8)."""
        size = low.shape[-2:]
        low = self.project_tap(low)
        mid = F.interpolate(self.project_tap(mid), size, mode="bilinear", align_corners=True)
        high = F.interpolate(self.project_tap(high), size, mode="bilinear", align_corners=True)
        return self.fuse(torch.cat([low, mid, high], dim=1))

    def merge(self, features: torch.Tensor, encoding: torch.Tensor) -> torch.Tensor:
        """cat([features, encoding]) (B, 256, h8, w8) -> 1x1 conv without bias -> (B, 128, h8, w8)."""
        return self.cross_merge(torch.cat([features, encoding], dim=1))


class HeterogeneousTransport(nn.Module):
    """HT (spec 1.7): tokens -> SelfAttention -> TransportAttention -> grid -> BN + residual -> ReLU."""

    def __init__(self, tokens: int, grid: tuple[int, int], config: HHNConfig) -> None:
        super().__init__()
        self.tokens, self.grid = tokens, grid
        self.self_attention = SelfAttention(ENCODER_DIM, SELF_ATTENTION_HEADS)
        self.cross_attention = TransportAttention(ENCODER_DIM, config.sinkhorn)
        self.expand = nn.Linear(tokens, grid[0] * grid[1], bias=False)
        self.norm = nn.BatchNorm2d(ENCODER_DIM)

    def forward(self, merged: torch.Tensor, pooled_residual: torch.Tensor) -> torch.Tensor:
        """merged (B, 128, h8, w8), pooled_residual (B, 128, h8, w8) -> S' (B, 128, h8, w8), >= 0.

        Token r = mean of grid row r (AdaptiveAvgPool1d(h8) over the flattened h8*w8 positions)."""
        bsz, ch = merged.shape[:2]
        tokens = F.adaptive_avg_pool1d(merged.reshape(bsz, ch, -1), self.tokens).permute(0, 2, 1)
        attended = self.cross_attention(self.self_attention(tokens), tokens)
        spread = self.expand(attended.permute(0, 2, 1)).view(bsz, ch, *self.grid)
        return F.relu(self.norm(spread) + pooled_residual)


class TextMaps(nn.Module):
    """Text embeddings -> spatial maps on the text grid (spec 1.3): shared Linear(512 -> cells),
    and a 1x1 conv merging the fg and bg maps for the query."""

    def __init__(self, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.to_map = nn.Linear(TEXT_DIM, grid[0] * grid[1])
        self.merge_fg_bg = nn.Conv2d(2, 1, 1)

    def forward(self, text: ClassEmbeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (refine map for the support, fg/bg merged map for the query), each (B, 1, gh, gw)."""
        fg, refine, bg = (self.to_map(e.float()).view(e.shape[0], 1, *self.grid) for e in text)
        return refine, self.merge_fg_bg(torch.cat([fg, bg], dim=1))


class MaskDecoder(nn.Module):
    """Decoder (spec 1.9): ``coarse`` (two 3x3 convs + ReLU) -> 2x bilinear upsample
    (align_corners=True) -> ``fine`` (3x3 conv + ReLU, 3x3 conv -> 2) -> ``prior_fusion`` on
    [logits; prior] (1x1 conv 3 -> 10, GELU, 1x1 conv 10 -> 2). The head is 2 x the input grid in
    each dimension (the released code takes 2 x width for both, which only differs for non-square).
    ``prior_in_input`` (``HHNConfig.prior_in_decoder``): ``coarse`` reads [fused; prior at the input
    grid] (129 channels)."""

    def __init__(self, prior_in_input: bool = False) -> None:
        super().__init__()
        self.prior_in_input = prior_in_input
        self.coarse = nn.Sequential(nn.Conv2d(ENCODER_DIM + prior_in_input, ENCODER_DIM, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(ENCODER_DIM, 64, 3, padding=1), nn.ReLU())
        self.fine = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 2, 3, padding=1))
        self.prior_fusion = nn.Sequential(nn.Conv2d(3, 10, 1), nn.GELU(), nn.Conv2d(10, 2, 1))

    def forward(self, fused: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """fused (B, 128, h8, w8), prior (B, H, W) in [0, 1] -> logits (B, 2, 2*h8, 2*w8), channel 1 = fg."""
        if self.prior_in_input:
            grid = F.interpolate(prior.unsqueeze(1).to(fused.dtype), fused.shape[-2:], mode="bilinear",
                                 align_corners=True)
            fused = torch.cat([fused, grid], dim=1)
        x = self.coarse(fused)
        head = (2 * x.shape[-2], 2 * x.shape[-1])
        logits = self.fine(F.interpolate(x, head, mode="bilinear", align_corners=True))
        prior = F.interpolate(prior.unsqueeze(1).to(logits.dtype), head, mode="bilinear", align_corners=True)
        return self.prior_fusion(torch.cat([logits, prior], dim=1))


class HHN(nn.Module):
    """The HHN / TLG network. See the module docstring for the data flow and the kept quirks.

    Parameters: ``config`` (architecture and switches), ``pretrained_backbone`` (load ImageNet
    weights through ``hhn.weights``; random init otherwise). The backbone is always frozen in
    forward (eval mode, no grad), also after ``.train()``; its ``requires_grad`` flags are left as is.
    """

    def __init__(self, config: HHNConfig, pretrained_backbone: bool = False) -> None:
        super().__init__()
        self.config = config
        self.spec = BACKBONES[config.backbone]
        self.geometry = geo = config.geometry
        self.backbone = self.spec.build(config.image_size, pretrained_backbone)
        self.correlation_encoder = SqueezeEncoder([len(g) for g in self.spec.pyramid_groups()])
        self.aggregation = HeterogeneousAggregation(self.spec.projection_channels())
        self.transport = HeterogeneousTransport(geo.tokens, geo.grid8, config)
        self.text = TextMaps(geo.text_grid) if config.use_text else None
        self.decoder = MaskDecoder(config.prior_in_decoder)

    def train(self, mode: bool = True) -> HHN:
        """Set training mode for the heads; the backbone stays in eval mode (frozen BN statistics)."""
        super().train(mode)
        self.backbone.eval()
        return self

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, h, w) ImageNet-normalised float32 at ``config.image_size`` -> backbone taps
        (see ``hhn.backbones``), computed without grad."""
        with torch.no_grad():
            return self.backbone(images)

    def forward(self, query_img: torch.Tensor, support_img: torch.Tensor, query_prior: torch.Tensor,
                support_prior: torch.Tensor, text: ClassEmbeddings | None = None,
                support_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One 1-shot forward of the released model.

        query_img, support_img: (B, 3, h, w) normalised. query_prior, support_prior: (B, h, w) in
        [0, 1] (the images' class pseudo-masks). text: class embeddings (required iff
        ``config.use_text``). support_mask: (B, h, w) in [0, 1], used only with
        ``config.mask_support_features`` (instead of the support prior, when given).
        Returns (query_logits, support_logits), each (B, 2, h, w) at the support image size.
        """
        weight = support_mask if support_mask is not None else support_prior
        query_logits, support_logits = self.forward_features(
            self.extract_features(query_img), self.extract_features(support_img), query_prior,
            support_prior, text, support_weight=weight, with_support=True)
        assert support_logits is not None  # with_support=True
        size = support_img.shape[-2:]
        return (F.interpolate(query_logits, size, mode="bilinear", align_corners=True),
                F.interpolate(support_logits, size, mode="bilinear", align_corners=True))

    def forward_query(self, query_feats: Sequence[torch.Tensor], support_feats: Sequence[torch.Tensor],
                      query_prior: torch.Tensor, text: ClassEmbeddings | None = None,
                      support_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Query-only forward from precomputed taps (the predictor's path; support branch skipped).

        query_feats / support_feats: ``extract_features`` outputs with the same batch size B.
        query_prior (B, H, W) in [0, 1]; support_weight (B, H, W) in [0, 1] (support mask or prior,
        used only with ``config.mask_support_features``). Returns the query logits at the head
        resolution, (B, 2, 2*h8, 2*w8) (upsample with align_corners=True).
        """
        return self.forward_features(query_feats, support_feats, query_prior, None, text,
                                     support_weight=support_weight, with_support=False)[0]

    def forward_features(self, query_feats: Sequence[torch.Tensor], support_feats: Sequence[torch.Tensor],
                         query_prior: torch.Tensor, support_prior: torch.Tensor | None,
                         text: ClassEmbeddings | None, support_weight: torch.Tensor | None = None,
                         with_support: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Everything after the backbone. Returns (query, support) logits at the head resolution
        (B, 2, 2*h8, 2*w8); support is None when ``with_support`` is false."""
        if self.config.use_text and text is None:
            raise ValueError(f"model {self.config.name!r} uses CLIP text: pass text=ClassEmbeddings(...)")
        spec = self.spec
        groups = spec.pyramid_groups()
        correlated_support = support_feats
        if self.config.mask_support_features:
            if support_weight is None:
                raise ValueError(f"model {self.config.name!r} masks support features: pass a support weight")
            correlated_support = weight_by_mask(support_feats, support_weight)
        pyramid = correlation_pyramid(query_feats, correlated_support, groups)
        encoded_query = self.correlation_encoder(pyramid)  # Hq
        encoded_support = self.correlation_encoder(swap_images(pyramid))  # Hs: the same correlations, transposed

        # QUIRK: one residual for both branches, from the SUPPORT mid tap (conv before upsampling).
        residual = F.interpolate(self.aggregation.project_tap(support_feats[spec.residual_tap]),
                                 self.geometry.head_size, mode="bilinear", align_corners=True)
        with self._fusion_context():
            refine_map, merged_map = self.text(text) if self.text is not None else (None, None)

        query_logits = self._branch(query_feats, spec.query_taps, encoded_support, encoded_query,
                                    F.avg_pool2d(residual, 2), merged_map, query_prior)
        support_logits = None
        if with_support:
            if support_prior is None:
                raise ValueError("the support branch needs support_prior")
            support_logits = self._branch(support_feats, spec.support_taps, encoded_query, encoded_support,
                                          F.max_pool2d(residual, 2), refine_map, support_prior)
        return query_logits, support_logits

    def _fusion_context(self) -> contextlib.AbstractContextManager:
        """QUIRK: text maps and HC run without autograd unless ``config.grad_through_fusion``."""
        return contextlib.nullcontext() if self.config.grad_through_fusion else torch.no_grad()

    def _branch(self, feats: Sequence[torch.Tensor], taps: Sequence[int], merge_encoding: torch.Tensor,
                own_encoding: torch.Tensor, pooled_residual: torch.Tensor, text_map: torch.Tensor | None,
                prior: torch.Tensor) -> torch.Tensor:
        """HA -> HT -> HC -> decoder for one image. ``merge_encoding`` is the OTHER image's aligned
        encoding (QUIRK), ``own_encoding`` the one aligned with this image (added before decoding)."""
        aggregated = self.aggregation.aggregate(*(feats[i] for i in taps))
        merged = self.aggregation.merge(aggregated, merge_encoding)
        transported = self.transport(merged, pooled_residual)
        with self._fusion_context():
            reduced = F.interpolate(transported, scale_factor=0.5, mode="bilinear")
            if text_map is not None:
                reduced = reduced * text_map
            fused = F.interpolate(reduced, scale_factor=2, mode="bilinear")
        return self.decoder(fused + own_encoding, prior)
