"""``wfss bench``: forward time and peak memory per preset, on random weights and random inputs.

Each preset runs in its own Python process (``python -m hhn.bench --worker ...``) so that its peak
RSS is its own. Per preset: the median of N full 1-shot forwards (both backbones, both branches, as
the released model) and the median of N query-only forwards from cached support features (the
predictor's path), after one warm-up forward each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

DEFAULT_PRESETS = ("tlg-resnet50-pascal", "wfss-lite0")


def _peak_rss_mib() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _timed(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call, in seconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_preset(preset: str, repeats: int, device: str, threads: int | None) -> dict:
    """Time one preset in this process; returns a JSON-able dict of the measurements."""
    import torch
    import torch.nn.functional as F

    from hhn.config import load_preset
    from hhn.device import select_device
    from hhn.network import HHN, ClassEmbeddings

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = select_device(device)
    config = load_preset(preset)
    model = HHN(config).to(dev).eval()
    h, w = config.image_size
    query, support = torch.randn(1, 3, h, w, device=dev), torch.randn(1, 3, h, w, device=dev)
    q_prior, s_prior = (torch.rand(1, h, w, device=dev) for _ in range(2))
    text = (ClassEmbeddings(*(F.normalize(torch.randn(1, 512, device=dev), dim=-1) for _ in range(3)))
            if config.use_text else None)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        s_feats = model.extract_features(support)

        def full() -> None:
            model(query, support, q_prior, s_prior, text)
            sync()

        def query_only() -> None:
            model.forward_query(model.extract_features(query), s_feats, q_prior, text, support_weight=s_prior)
            sync()

        full_s = _timed(full, repeats)
        query_s = _timed(query_only, repeats)
    return {"preset": preset, "backbone": config.backbone, "size": f"{h}x{w}", "device": str(dev),
            "threads": torch.get_num_threads(), "forward_s": full_s, "query_s": query_s,
            "peak_rss_mib": _peak_rss_mib()}


def _run_worker(preset: str, repeats: int, device: str, threads: int | None) -> dict:
    cmd = [sys.executable, "-m", "hhn.bench", "--worker", preset, "--repeats", str(repeats), "--device", device]
    if threads:
        cmd += ["--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        from hhn.errors import UserError

        raise UserError(f"benchmark of {preset!r} failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_bench_cli(args: argparse.Namespace) -> int:
    """Entry point of ``wfss bench`` (flags: --preset (repeatable), --repeats, --threads, --device)."""
    from hhn.config import load_preset

    presets = args.preset or list(DEFAULT_PRESETS)
    for name in presets:
        load_preset(name)  # unknown names fail before any work, with the list of presets
    header = (f"{'preset':<22} {'backbone':<19} {'input':>8} {'device':>6} {'thr':>3} "
              f"{'forward s':>9} {'query s':>8} {'peak RSS MiB':>12}")
    print(f"median of {args.repeats} runs after 1 warm-up; random weights; 1-shot; "
          f"'query' = query-only forward with cached support features")
    print(header)
    print("-" * len(header))
    for name in presets:
        r = _run_worker(name, args.repeats, args.device, args.threads)
        print(f"{r['preset']:<22} {r['backbone']:<19} {r['size']:>8} {r['device']:>6} {r['threads']:>3} "
              f"{r['forward_s']:>9.3f} {r['query_s']:>8.3f} {r['peak_rss_mib']:>12.0f}", flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="internal worker of `wfss bench`")
    parser.add_argument("--worker", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    ns = parser.parse_args()
    print(json.dumps(bench_preset(ns.worker, ns.repeats, ns.device, ns.threads)))
