"""Packaging: the console script, the npe2 manifest (editable and built wheel), light imports."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from napari_wfss.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ("label", "train", "eval", "convert-tlg", "bench", "weights", "sample")


def _run(args: list[str], env: dict | None = None, timeout: int = 300, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def test_wfss_help_lists_every_subcommand():
    out = _run([sys.executable, "-m", "napari_wfss.cli", "--help"])
    assert out.returncode == 0, out.stderr
    for name in SUBCOMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert "usage: wfss " + name in capsys.readouterr().out


def test_parser_maps_each_subcommand_to_an_importable_runner():
    import importlib

    parser = build_parser()
    minimal = {"label": ["label", "f", "--tags", "t.csv", "--out", "o"],
               "train": ["train", "--data", "d", "--out", "o"],
               "eval": ["eval", "--data", "d"], "convert-tlg": ["convert-tlg", "a", "b"], "bench": ["bench"],
               "weights": ["weights"], "sample": ["sample", "o"]}
    for name in SUBCOMMANDS:
        args = parser.parse_args(minimal[name])
        module_name, func_name = args.run.split(":")
        assert callable(getattr(importlib.import_module(module_name), func_name)), args.run


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("wfss")
    assert exe.exists(), "the `wfss` console script is not installed next to this interpreter"
    out = _run([str(exe), "--help"])
    assert out.returncode == 0 and "convert-tlg" in out.stdout


def test_core_modules_import_no_qt_napari_or_torch():
    code = (
        "import sys, napari_wfss.cli, napari_wfss.session, napari_wfss.export, napari_wfss.images, "
        "napari_wfss.classes, napari_wfss.engine, napari_wfss.batch\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'vispy'})\n"
        "print(','.join(bad))"
    )
    out = _run([sys.executable, "-c", code])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"UI modules imported by the core: {out.stdout}"


def test_npe2_validates_the_installed_plugin_with_imports():
    out = _run([sys.executable, "-m", "npe2", "validate", "--imports", "napari-wfss"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in (out.stdout + out.stderr).lower()


@pytest.mark.slow
def test_built_wheel_carries_manifest_and_both_packages(tmp_path):
    wheel_dir = tmp_path / "wheel"
    out = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                "-w", str(wheel_dir), str(REPO)], timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = wheel_dir.glob("napari_wfss-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "napari_wfss/napari.yaml" in names
    assert "hhn/__init__.py" in names and "napari_wfss/cli.py" in names
    assert not any(n.startswith(("tests/", "src_model/")) for n in names), "tests or src_model/ leaked into the wheel"
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "napari_wfss:napari.yaml" in entry_points

    # Install the wheel into an isolated target and let npe2 find the manifest *there*.
    target = tmp_path / "site"
    out = _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)])
    assert out.returncode == 0, out.stdout + out.stderr
    env = dict(os.environ, PYTHONPATH=str(target))
    # Run from tmp_path: from the repository root, `python -c` would import the source folder napari_wfss/.
    probe = _run([sys.executable, "-c",
                  "import napari_wfss, hhn; print(napari_wfss.__file__); print(hhn.__file__)"], env=env, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert all(line.startswith(str(target)) for line in probe.stdout.split()), probe.stdout
    out = _run([sys.executable, "-m", "npe2", "validate", "--imports", "napari-wfss"], env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    code = "import npe2; print(npe2.PluginManifest.from_distribution('napari-wfss').name)"
    where = _run([sys.executable, "-c", code], env=env, cwd=tmp_path)
    assert where.returncode == 0 and where.stdout.strip() == "napari-wfss", where.stdout + where.stderr
