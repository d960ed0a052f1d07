"""``wfss bench``: forward / training-step time and peak memory per preset, on random weights and inputs.

Each measurement runs in its own Python process (``python -m hhn.bench --worker ...``) so that its
peak RSS is its own. Inference (default), per preset: the median of N full 1-shot forwards (both
backbones, both branches, as the released model, B = 1) and the median of N query-only forwards from
cached support features (the predictor's path, B = 1), after one warm-up forward each.

Training step (``--train-step``): what ``hhn.training.loop.Trainer`` does per step on cached backbone
taps: ``forward_features`` on B 1-shot episodes with the support branch, the recipe's two cross-entropy
terms on logits upsampled to the input size (random targets with some void pixels), backward, AdamW
on the heads. Median of N steps after one warm-up step, wall time and process CPU time (all threads);
on a shared machine the CPU time is the steadier number. The load average is printed for context.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DEFAULT_PRESETS = ("tlg-resnet50-pascal", "wfss-lite0")
#: ``--train-step`` default: the preset ``wfss train`` trains.
DEFAULT_TRAIN_PRESETS = ("wfss-lite0",)


def _peak_rss_mib() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _timed(fn, repeats: int) -> tuple[float, float]:
    """Median (wall, process CPU) seconds of ``repeats`` calls after one warm-up call."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def _setup(preset: str, image_size: tuple[int, int] | None, device: str, threads: int | None):
    """(config, device, random-weight model) for one measurement, seeded."""
    import dataclasses

    import torch

    from hhn.config import load_preset
    from hhn.device import select_device, set_cpu_threads
    from hhn.network import HHN

    set_cpu_threads(threads)
    torch.manual_seed(0)
    dev = select_device(device)
    config = load_preset(preset)
    if image_size:
        config = dataclasses.replace(config, image_size=image_size)
    return config, dev, HHN(config).to(dev)


def _random_text(config, batch: int, dev):
    import torch
    import torch.nn.functional as F

    from hhn.network import ClassEmbeddings

    if not config.use_text:
        return None
    return ClassEmbeddings(*(F.normalize(torch.randn(batch, 512, device=dev), dim=-1) for _ in range(3)))


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench_preset(preset: str, repeats: int, device: str, threads: int | None,
                 image_size: tuple[int, int] | None = None) -> dict:
    """Time inference of one preset in this process; returns a JSON-able dict of the measurements."""
    import torch

    config, dev, model = _setup(preset, image_size, device, threads)
    model.eval()
    h, w = config.image_size
    query, support = torch.randn(1, 3, h, w, device=dev), torch.randn(1, 3, h, w, device=dev)
    q_prior, s_prior = (torch.rand(1, h, w, device=dev) for _ in range(2))
    text = _random_text(config, 1, dev)

    with torch.no_grad():
        s_feats = model.extract_features(support)

        def full() -> None:
            model(query, support, q_prior, s_prior, text)
            _sync(dev)

        def query_only() -> None:
            model.forward_query(model.extract_features(query), s_feats, q_prior, text, support_weight=s_prior)
            _sync(dev)

        full_s = _timed(full, repeats)[0]
        query_s = _timed(query_only, repeats)[0]
    return {"preset": preset, "backbone": config.backbone, "size": f"{h}x{w}", "device": str(dev),
            "threads": torch.get_num_threads(), "forward_s": full_s, "query_s": query_s,
            "peak_rss_mib": _peak_rss_mib()}


def bench_train_step(preset: str, repeats: int, device: str, threads: int | None,
                     image_size: tuple[int, int] | None = None, batch_size: int = 8) -> dict:
    """Time one training step (see the module docstring) of one preset in this process."""
    import torch

    from hhn.training.loop import segmentation_loss, trainable_parameters
    from hhn.training.recipes import get_recipe

    recipe = get_recipe("ours")
    config, dev, model = _setup(preset, image_size, device, threads)
    h, w = config.image_size
    gen = torch.Generator().manual_seed(1)

    def cached_taps() -> list[torch.Tensor]:  # as in the feature bank: float16 there, float32 in a batch
        with torch.no_grad():
            images = torch.randn(batch_size, 3, h, w, generator=gen).to(dev)
            return [t.half().float() for t in model.extract_features(images)]

    q_feats, s_feats = cached_taps(), cached_taps()
    head = config.geometry.head_size
    q_prior, s_prior, s_weight = (torch.rand(batch_size, *head, generator=gen).to(dev) for _ in range(3))

    def target() -> torch.Tensor:
        labels = (torch.rand(batch_size, h, w, generator=gen) > 0.5).long()
        labels[torch.rand(batch_size, h, w, generator=gen) > 0.95] = 255  # some void pixels
        return labels.to(dev)

    q_target, s_target = target(), target()
    text = _random_text(config, batch_size, dev)
    params = trainable_parameters(model)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    model.train()

    def step() -> None:
        q_logits, s_logits = model.forward_features(q_feats, s_feats, q_prior, s_prior, text,
                                                    support_weight=s_weight, with_support=True)
        loss = (recipe.query_loss_weight * segmentation_loss(q_logits, q_target, recipe.ignore_void)
                + recipe.support_loss_weight * segmentation_loss(s_logits, s_target, recipe.ignore_void))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(dev)

    wall, cpu = _timed(step, repeats)
    return {"preset": preset, "backbone": config.backbone, "size": f"{h}x{w}", "device": str(dev),
            "threads": torch.get_num_threads(), "batch": batch_size, "step_s": wall, "step_cpu_s": cpu,
            "peak_rss_mib": _peak_rss_mib()}


def _run_worker(preset: str, args: argparse.Namespace, mode: str) -> dict:
    cmd = [sys.executable, "-m", "hhn.bench", "--worker", preset, "--mode", mode, "--repeats", str(args.repeats),
           "--device", args.device, "--batch-size", str(args.batch_size)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.image_size:
        cmd += ["--image-size", args.image_size]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        from hhn.errors import UserError

        raise UserError(f"benchmark of {preset!r} failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """``"288"`` -> (288, 288); ``"256x320"`` -> (256, 320) (height x width); None stays None."""
    if not text:
        return None
    from hhn.errors import UserError

    try:
        parts = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        parts = ()
    if len(parts) not in (1, 2):
        raise UserError(f"--image-size {text!r}: give one side (e.g. 288) or HEIGHTxWIDTH (e.g. 256x320)")
    return (parts[0], parts[-1])


def run_bench_cli(args: argparse.Namespace) -> int:
    """Entry point of ``wfss bench`` (flags: --preset (repeatable), --repeats, --threads, --device,
    --train-step, --batch-size, --image-size)."""
    import dataclasses

    from hhn.config import load_preset

    train = args.train_step
    size = parse_image_size(args.image_size)
    presets = args.preset or list(DEFAULT_TRAIN_PRESETS if train else DEFAULT_PRESETS)
    for name in presets:  # unknown names and impossible sizes fail before any work
        config = load_preset(name)
        if size:
            _ = dataclasses.replace(config, image_size=size).geometry
    load = "/".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    if train:
        header = (f"{'preset':<22} {'backbone':<19} {'input':>8} {'device':>6} {'thr':>3} {'B':>3} "
                  f"{'step s':>7} {'cpu s':>7} {'peak RSS MiB':>12}")
        print(f"training step (forward_features + loss + backward + AdamW, cached taps, both branches): median "
              f"of {args.repeats} after 1 warm-up; random weights; load average {load}")
    else:
        header = (f"{'preset':<22} {'backbone':<19} {'input':>8} {'device':>6} {'thr':>3} "
                  f"{'forward s':>9} {'query s':>8} {'peak RSS MiB':>12}")
        print(f"median of {args.repeats} runs after 1 warm-up; random weights; 1-shot; B = 1; "
              f"'query' = query-only forward with cached support features; load average {load}")
    print(header)
    print("-" * len(header))
    for name in presets:
        r = _run_worker(name, args, "train" if train else "infer")
        row = f"{r['preset']:<22} {r['backbone']:<19} {r['size']:>8} {r['device']:>6} {r['threads']:>3} "
        if train:
            row += f"{r['batch']:>3} {r['step_s']:>7.2f} {r['step_cpu_s']:>7.2f} {r['peak_rss_mib']:>12.0f}"
        else:
            row += f"{r['forward_s']:>9.3f} {r['query_s']:>8.3f} {r['peak_rss_mib']:>12.0f}"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="internal worker of `wfss bench`")
    parser.add_argument("--worker", required=True)
    parser.add_argument("--mode", choices=("infer", "train"), default="infer")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", default=None)
    ns = parser.parse_args()
    size_arg = parse_image_size(ns.image_size)
    if ns.mode == "train":
        result = bench_train_step(ns.worker, ns.repeats, ns.device, ns.threads, size_arg, ns.batch_size)
    else:
        result = bench_preset(ns.worker, ns.repeats, ns.device, ns.threads, size_arg)
    print(json.dumps(result))
