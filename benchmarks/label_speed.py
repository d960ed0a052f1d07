"""``wfss label`` end to end on a folder of real photos: wall, CPU, peak RSS, s/image, the backbone floor.

Usage::

    python benchmarks/label_speed.py [--data ../shared/data/msrc_v2] [--images 100] [--model default]
        [--growth 1000] [--widget] [--record benchmarks/results/label-speed.jsonl] [-- EXTRA wfss label FLAGS]

What it does, every number from the product's own path:

1. **Builds the folder** (in ``--work``, default a temporary folder): ``--images`` MSRC-v2 photos showing
   one of ``--classes`` (default cow, sheep, car), chosen deterministically, with ``--tagged`` images per
   class (default 2) tagged in ``tags.csv``; the rest are the queries.
2. **Runs ``wfss label``** (the installed console script's module, ``python -m napari_wfss.cli``) in a
   child process with a fresh ``--out``, and reads the child's own resource usage when it ends
   (``os.wait4``): wall seconds, CPU seconds (user + system, all threads), peak RSS; s/image is the wall
   time over the images labelled. The child's RSS is sampled every 0.2 s together with the number of
   masks written, which gives the RSS growth in MB per 1000 images (the slope of RSS over images written,
   past the first 20 % of the images).
3. **Measures the floor** in another child process with the same environment: the model's backbone
   (EfficientNet-Lite0 for the default model) forward on one image at the network size, batch 1, the
   median over 20 photos of the folder after a warm-up; the label run's s/image over it is the floor ratio.
4. ``--growth N``: a second ``wfss label`` run on a folder of N queries (the photos replicated under
   new names), which reports only its RSS growth per 1000 images and its s/image.
5. ``--widget``: the napari widget's latency (needs a display, e.g. ``xvfb-run -a``): the project of the
   folder opened in the widget, Propose clicked, seconds until the first proposal is shown, and the mean
   seconds per image until the last one is; measured in a child process (see ``widget_latency.py``).

Each result is printed and appended as one JSON line (with the command, the machine's load average, CPU
count and the git commit) to ``--record``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "msrc_v2"
DEFAULT_RECORD = HERE / "results" / "label-speed.jsonl"


# ----------------------------------------------------------------------------------- the folder
def choose_images(data: Path, classes: list[str], count: int, tagged: int) -> tuple[list[str], dict[str, str]]:
    """(image names, {tagged image: class}) from MSRC-v2: images showing one of ``classes``, sorted by name;
    per class the first ``tagged`` images showing it (and no other of ``classes``) are tagged with it."""
    present = json.loads((data / "image_classes.json").read_text())
    names = sorted(n for n, found in present.items() if set(found) & set(classes))
    if len(names) < count:
        raise SystemExit(f"only {len(names)} images of {data} show {classes}; ask for fewer --images")
    tags: dict[str, str] = {}
    for c in classes:
        only = [n for n in names if c in present[n] and len(set(present[n]) & set(classes)) == 1]
        for name in only[:tagged]:
            tags[name] = c
    rest = [n for n in names if n not in tags]
    return list(tags) + rest[:count - len(tags)], tags


def build_folder(data: Path, folder: Path, classes: list[str], count: int, tagged: int,
                 copies: int = 1) -> tuple[Path, Path, int]:
    """Write ``folder/images`` (the photos; with ``copies`` > 1 every untagged photo ``copies`` times under
    new names) and ``folder/tags.csv``. Returns (images folder, tags file, number of queries)."""
    names, tags = choose_images(data, classes, count, tagged)
    images = folder / "images"
    if images.exists():
        shutil.rmtree(images)
    images.mkdir(parents=True)
    queries = 0
    for name in names:
        source = data / "images" / f"{name}.jpg"
        for copy in range(1 if name in tags else copies):
            target = images / (f"{name}.jpg" if copy == 0 else f"{name}_copy{copy:03d}.jpg")
            os.link(source, target) if _same_device(source, images) else shutil.copyfile(source, target)
            queries += name not in tags
    csv = folder / "tags.csv"
    csv.write_text("image,class\n" + "".join(f"{name}.jpg,{c}\n" for name, c in tags.items()))
    return images, csv, queries


def _same_device(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


# ----------------------------------------------------------------------------------- child runs
class RssSampler(threading.Thread):
    """Samples a child's resident set size (MiB, from /proc) and the number of masks written, every 0.2 s."""

    def __init__(self, pid: int, masks: Path) -> None:
        super().__init__(daemon=True)
        self.pid, self.masks = pid, masks
        self.samples: list[tuple[int, float]] = []  # (masks written, RSS MiB)
        self.done = threading.Event()

    def run(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while not self.done.wait(0.2):
            try:
                rss_kib = next(int(line.split()[1]) for line in status.read_text().splitlines()
                               if line.startswith("VmRSS:"))
                written = len(os.listdir(self.masks)) if self.masks.is_dir() else 0
            except (OSError, StopIteration):
                continue
            self.samples.append((written, rss_kib / 1024))

    def growth_per_1000(self, total: int) -> float | None:
        """RSS growth in MiB per 1000 images: the least-squares slope of RSS over images written, from the
        samples past the first 20 % of ``total`` (the start-up and the first batches excluded)."""
        later = [(n, rss) for n, rss in self.samples if n >= max(1, total // 5)]
        if len({n for n, _ in later}) < 2:
            return None
        n_mean = statistics.fmean(n for n, _ in later)
        r_mean = statistics.fmean(r for _, r in later)
        slope = (sum((n - n_mean) * (r - r_mean) for n, r in later)
                 / sum((n - n_mean) ** 2 for n, _ in later))
        return slope * 1000


def run_child(command: list[str], env: dict[str, str], masks: Path | None = None) -> dict:
    """Run ``command``: its wall and CPU seconds (``os.wait4``: the child's own usage), peak RSS (MiB), exit code,
    output and (with ``masks``) RSS sampler."""
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = RssSampler(child.pid, masks) if masks is not None else None
    if sampler:
        sampler.start()
    chunks: dict[str, list[str]] = {"out": [], "err": []}
    readers = [threading.Thread(target=lambda s=s, k=k: chunks[k].append(s.read()), daemon=True)
               for s, k in ((child.stdout, "out"), (child.stderr, "err"))]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    if sampler:
        sampler.done.set()
        sampler.join()
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,
            "code": child.returncode, "stdout": "".join(chunks["out"]), "stderr": "".join(chunks["err"]),
            "sampler": sampler}


def label_run(images: Path, tags: Path, out: Path, queries: int, model: str, extra: list[str],
              env: dict[str, str]) -> dict:
    """One ``wfss label`` run into a fresh ``out``; its numbers."""
    if out.exists():
        shutil.rmtree(out)
    command = [sys.executable, "-m", "napari_wfss.cli", "label", str(images), "--tags", str(tags),
               "--out", str(out), "--model", model, *extra]
    run = run_child(command, env, masks=out / "masks")
    if run["code"] != 0:
        raise SystemExit(f"wfss label failed (exit {run['code']}):\n{run['stderr'][-3000:]}")
    labelled = len(os.listdir(out / "masks"))
    sampler = run["sampler"]
    return {"command": " ".join(command), "queries": queries, "labelled": labelled,
            "wall_s": round(run["wall"], 2), "cpu_s": round(run["cpu"], 2),
            "s_per_image": round(run["wall"] / max(1, labelled), 3),
            "cpu_s_per_image": round(run["cpu"] / max(1, labelled), 3),
            "peak_rss_mib": round(run["peak_rss_mib"], 1),
            "rss_growth_mib_per_1000": _round(sampler.growth_per_1000(labelled)),
            "summary": run["stdout"].strip().splitlines()[:2]}


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# ----------------------------------------------------------------------------------- the floor
def floor_worker(images: Path, model: str, count: int) -> None:
    """Child: median seconds of one backbone forward (batch 1, network size) over ``count`` photos."""
    import numpy as np
    import torch

    from hhn.factory import create_model
    from hhn.preprocess import to_network_input
    from napari_wfss.images import read_image

    net = create_model(model, device="cpu").eval()
    photos = sorted(images.iterdir())[:count]
    inputs = [to_network_input(read_image(p), net.config.image_size) for p in photos]
    times, cpu = [], []
    with torch.inference_mode():
        net.extract_features(inputs[0])
        for x in inputs:
            start, start_cpu = time.perf_counter(), time.process_time()
            net.extract_features(x)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    print(json.dumps({"backbone": net.config.backbone, "size": list(net.config.image_size),
                      "threads": torch.get_num_threads(), "floor_s": statistics.median(times),
                      "floor_cpu_s": statistics.median(cpu), "images": len(inputs),
                      "mean_abs": float(np.mean([float(x.abs().mean()) for x in inputs]))}))


def measure_floor(images: Path, model: str, env: dict[str, str]) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--floor-worker", str(images), "--model", model]
    run = run_child(command, env)
    if run["code"] != 0:
        raise SystemExit(f"floor measurement failed:\n{run['stderr'][-3000:]}")
    return json.loads(run["stdout"].strip().splitlines()[-1])


# ----------------------------------------------------------------------------------- main
def _context() -> dict:
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    return {"commit": commit + ("+dirty" if dirty else ""), "cpus": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def _record(path: Path | None, row: dict) -> None:
    print(json.dumps(row))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MSRC-v2 folder (default: %(default)s)")
    parser.add_argument("--images", type=int, default=100, help="images in the folder (default: 100)")
    parser.add_argument("--classes", default="cow,sheep,car", help="classes (default: cow,sheep,car)")
    parser.add_argument("--tagged", type=int, default=2, help="tagged images per class (default: 2)")
    parser.add_argument("--model", default="default", help="--model of wfss label (default: default)")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--growth", type=int, default=0,
                        help="also run a folder of this many queries (photos replicated) for RSS growth")
    parser.add_argument("--widget", action="store_true", help="also measure the widget's latency (needs a display)")
    parser.add_argument("--label-only", action="store_true", help="skip the floor measurement")
    parser.add_argument("--note", default="", help="free text stored with the record (e.g. 'before')")
    parser.add_argument("--record", type=Path, default=DEFAULT_RECORD,
                        help="JSON-lines file the results are appended to (default: %(default)s)")
    parser.add_argument("--floor-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    if args.floor_worker is not None:
        floor_worker(args.floor_worker, args.model, 20)
        return 0
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src_model"), str(ROOT), env.get("PYTHONPATH"))
                                        if p)
    work = args.work or Path(tempfile.mkdtemp(prefix="wfss-label-speed-"))
    context = {**_context(), "note": args.note, "benchmark": "label_speed",
               "argv": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}
    try:
        images, tags, queries = build_folder(args.data, work / "folder", classes, args.images, args.tagged)
        row = {**context, "folder": f"{args.images} MSRC images, {','.join(classes)}, {args.tagged} tagged each"}
        row.update(label_run(images, tags, work / "out", queries, args.model, extra, env))
        if not args.label_only:
            floor = measure_floor(images, args.model, env)
            row.update({"floor_s_per_image": round(floor["floor_s"], 4),
                        "floor_cpu_s_per_image": round(floor["floor_cpu_s"], 4),
                        "floor": f"{floor['backbone']} forward at {floor['size']}, batch 1, "
                                 f"{floor['threads']} threads, median of {floor['images']}",
                        "floor_ratio": round(row["s_per_image"] / floor["floor_s"], 1)})
        _record(args.record, row)
        if args.growth:
            copies = -(-args.growth // max(1, queries))
            images, tags, queries = build_folder(args.data, work / "growth", classes, args.images, args.tagged,
                                                 copies=copies)
            growth = {**context, "folder": f"{queries} queries ({args.images} MSRC images, untagged ones "
                                           f"replicated {copies}x)"}
            growth.update(label_run(images, tags, work / "growth-out", queries, args.model, extra, env))
            _record(args.record, growth)
        if args.widget:
            command = [sys.executable, str(HERE / "widget_latency.py"), str(work / "folder" / "images"),
                       str(work / "folder" / "tags.csv"), "--model", args.model]
            result = subprocess.run(command, env=env, capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f"widget latency failed:\n{result.stderr[-3000:]}")
            _record(args.record, {**context, **json.loads(result.stdout.strip().splitlines()[-1])})
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
