"""Scaling out: ``wfss label --shard K/N`` + ``wfss merge-exports``, and ``wfss label --dask``.

Each check compares with the single-process run of the same command: the masks must be the same pixel
for pixel (bit for bit: every runner proposes through ``LearntClasses.propose_file`` on one torch thread).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import keep_only
from PIL import Image

from napari_wfss.cli import main
from napari_wfss.shards import SHARD_FILE, ShardError, in_shard, merge_exports, parse_shard, shard_dir


def _masks(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted((out / "masks").glob("*.png"))}


def _coco(out: Path) -> dict:
    return json.loads((out / "coco.json").read_text(encoding="utf-8"))


def _same_export(a: Path, b: Path) -> None:
    ma, mb = _masks(a), _masks(b)
    assert ma.keys() == mb.keys() and ma
    assert all(np.array_equal(ma[k], mb[k]) for k in ma), [k for k in ma if not np.array_equal(ma[k], mb[k])]
    ca, cb = _coco(a), _coco(b)
    assert ca["categories"] == cb["categories"]
    assert sorted(i["file_name"] for i in ca["images"]) == sorted(i["file_name"] for i in cb["images"])
    assert len(ca["annotations"]) == len(cb["annotations"])
    assert (a / "classes.txt").read_text() == (b / "classes.txt").read_text()


@pytest.fixture
def folder(sample_images):
    keep_only(sample_images, {f"coin_0{i}.png" for i in range(5)} | {f"cat_0{i}.png" for i in range(5)})
    tags = sample_images.parent / "tags-small.csv"
    tags.write_text("image,class\ncoin_00.png,coin\ncoin_01.png,coin\ncat_00.png,cat\ncat_01.png,cat\n")
    return sample_images, tags


def _label(folder: Path, tags: Path, out: Path, model: str, *extra: str) -> int:
    return main(["label", str(folder), "--tags", str(tags), "--out", str(out), "--model", model, "--threads", "1",
                 *extra])


def test_the_partition_is_fixed_and_each_image_in_one_shard():
    paths = [f"dir{i % 7}/img_{i}.jpg" for i in range(500)]
    for n in (1, 2, 3, 8):
        owners = [[k for k in range(1, n + 1) if in_shard(p, k, n)] for p in paths]
        assert all(len(o) == 1 for o in owners)
        counts = np.bincount([o[0] for o in owners], minlength=n + 1)[1:]
        assert counts.min() > 0.5 * len(paths) / n  # spread, not all in one shard
    assert [in_shard("a.png", k, 4) for k in range(1, 5)] == [in_shard("a.png", k, 4) for k in range(1, 5)]
    assert parse_shard(" 2/8 ") == (2, 8)
    for bad in ("0/2", "3/2", "2", "a/b", "-1/2"):
        with pytest.raises(ShardError, match="K/N"):
            parse_shard(bad)


def test_two_shards_merge_into_the_single_run_export_and_a_killed_shard_resumes(folder, tiny_model, tmp_path,
                                                                                  capsys, monkeypatch):
    images, tags = folder
    assert _label(images, tags, tmp_path / "single", tiny_model) == 0
    out = tmp_path / "sharded"
    assert _label(images, tags, out, tiny_model, "--shard", "1/2") == 0
    assert "waiting for shard(s) 2" in capsys.readouterr().out
    assert not (out / "coco.json").exists() and (shard_dir(out, 1, 2) / "coco.json").exists()
    with pytest.raises(ShardError, match="shard\\(s\\) 2 of 2 not complete"):
        merge_exports(out)

    # shard 2 killed after its first image: not complete, nothing merged; its rerun resumes, then merges
    import napari_wfss.batch as batch

    real = batch.DatasetWriter.write_image
    calls = []

    def killed(self, image):
        calls.append(image)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(self, image)

    monkeypatch.setattr(batch.DatasetWriter, "write_image", killed)
    assert _label(images, tags, out, tiny_model, "--shard", "2/2") == 130
    monkeypatch.setattr(batch.DatasetWriter, "write_image", real)
    assert not json.loads((shard_dir(out, 2, 2) / SHARD_FILE).read_text())["complete"]
    assert not (out / "coco.json").exists()
    capsys.readouterr()
    assert _label(images, tags, out, tiny_model, "--shard", "2/2") == 0
    text = capsys.readouterr().out
    assert "already done" in text and "merged 2 shard(s)" in text
    _same_export(tmp_path / "single", out)
    first, second = (set(_masks(shard_dir(out, k, 2))) for k in (1, 2))
    assert first and second and not first & second  # disjoint outputs

    # idempotent by hand, and the merged folder is a dataset the training reader takes
    assert main(["merge-exports", str(out)]) == 0
    _same_export(tmp_path / "single", out)
    from hhn.data.generic import GenericDataset

    assert len(GenericDataset(out).names) == len(_masks(out))


def test_shards_with_other_tags_are_not_merged(folder, tiny_model, tmp_path, capsys):
    images, tags = folder
    out = tmp_path / "sharded"
    assert _label(images, tags, out, tiny_model, "--shard", "1/2") == 0
    other = tmp_path / "other.csv"
    other.write_text("image,class\ncoin_00.png,coin\ncoin_01.png,coin\n")
    assert _label(images, other, out, tiny_model, "--shard", "2/2") == 2
    assert "other classes than shard 1" in capsys.readouterr().err
    assert not (out / "coco.json").exists()


@pytest.mark.slow
def test_dask_local_cluster_labels_the_sample_like_one_process(tmp_path):
    """The README's sample folder with the default model: `--dask local:2` (a distributed.LocalCluster of two
    worker processes) gives the single-process masks bit for bit."""
    from napari_wfss.sample import make_sample_folder

    root = make_sample_folder(tmp_path / "sample")
    common = ["label", str(root / "images"), "--tags", str(root / "tags.csv"), "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "single"), "--threads", "1"]) == 0
    assert main([*common, "--out", str(tmp_path / "dask"), "--dask", "local:2"]) == 0
    _same_export(tmp_path / "single", tmp_path / "dask")


def test_local_dask_workers_start_without_the_slow_allocator_setting():
    """Dask's nannies set MALLOC_TRIM_THRESHOLD_ in their workers, which made each image ~1.6x slower
    (benchmarks/scale_out.py); DaskRunner's local workers are started without it."""
    import os

    from napari_wfss.dask_runner import SLOW_ALLOCATOR_ENV, DaskRunner

    with DaskRunner("local:1") as runner:
        seen = runner.client.run(lambda: os.environ.get(SLOW_ALLOCATOR_ENV))
    assert list(seen.values()) == [None]
