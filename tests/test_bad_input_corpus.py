"""Bad input never crashes and never loses work: a corpus of malformed inputs, run end to end.

Every case builds its own input here (no binary blobs in the repository), runs it through the product's
own entry points (``wfss label``, ``wfss train``/``eval``, ``wfss convert-tlg``, ``--model``, and the
widget's folder open: :class:`~napari_wfss.session.Session` listing and reading the images), and checks:

- the outcome is the documented one: labelled, skipped with a line naming the file, or refused (exit 2);
- the output holds one clear line naming the file (or folder, or row) and the problem, and no traceback;
- the results of an earlier run are untouched (mask and record files byte for byte).

What each case printed goes into ``docs/RELIABILITY.md``: the last test checks that the table there is
what this run observed (temporary paths written as ``<tmp>``). After changing a message, rewrite it with::

    WFSS_WRITE_RELIABILITY=1 HF_HUB_OFFLINE=1 python -m pytest tests/test_bad_input_corpus.py
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "RELIABILITY.md"
MARKER = "CORPUS-RESULTS"


@dataclass
class Observed:
    """What one case did: ``outcome`` in words, ``message`` the line that names the file and the problem."""

    group: str
    what: str
    surface: str
    outcome: str
    message: str


@dataclass(frozen=True)
class Case:
    id: str
    group: str
    what: str
    run: Callable[[Env], Observed]


@dataclass
class Run:
    """One in-process ``wfss`` command: exit code and everything it printed (the case folder as ``<tmp>``)."""

    code: int
    text: str

    def line(self, *needles: str) -> str:
        """The first printed line holding every needle (the test fails, showing the output, if none does)."""
        for line in self.text.splitlines():
            if all(n in line for n in needles):
                return line.strip()
        raise AssertionError(f"no line with {needles!r} in:\n{self.text}")


class Env:
    """A case's temporary folder, the tiny model and the helpers every case uses."""

    def __init__(self, tmp: Path, model: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp, self.model, self.monkeypatch = tmp, model, monkeypatch

    def wfss(self, *argv: str | Path) -> Run:
        """Run ``wfss ARGV`` in this process; an exception escaping ``main`` fails the case (a traceback)."""
        from napari_wfss.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
        text = out.getvalue() + err.getvalue()
        assert "Traceback" not in text, text
        return Run(code, text.replace(str(self.tmp), "<tmp>"))  # needles never match the temporary path

    def folder(self, name: str = "images", tagged: int = 2, untagged: int = 1) -> tuple[Path, Path]:
        """A folder of small photos: ``tagged`` tagged 'coin' in ``tags.csv`` beside it, ``untagged`` not."""
        folder = self.tmp / name
        folder.mkdir(parents=True)
        for i in range(tagged):
            photo(i, 48, 64).save(folder / f"coin_{i:02d}.png")
        for i in range(untagged):
            photo(100 + i, 48, 64).save(folder / f"other_{i:02d}.png")
        tags = self.tmp / f"{name}-tags.csv"
        tags.write_text("image,class\n" + "".join(f"coin_{i:02d}.png,coin\n" for i in range(tagged)))
        return folder, tags

    def label(self, folder: Path, tags: Path, out: Path, *extra: str | Path) -> Run:
        return self.wfss("label", folder, "--tags", tags, "--out", out, "--model", self.model, "--threads", "1",
                         *extra)


def photo(seed: int, h: int, w: int) -> Image.Image:
    """A small RGB test photo: a bright disk on a textured background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2
    rgb = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
    rgb[disk] = (220, 180, 40)
    return Image.fromarray(rgb)


def snapshot(out: Path) -> dict[str, bytes]:
    """The bytes of the per-image results (masks, records) of an output folder."""
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for sub in ("masks", ".records") for p in sorted((out / sub).glob("*")) if p.is_file()}


def untouched(before: dict[str, bytes], out: Path) -> None:
    after = snapshot(out)
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"earlier results changed: {changed}"


def one_line(text: str) -> str:
    """The message on one line, with JSON error positions (which move with the temporary path's length)
    written as ``line L column C (char N)``."""
    text = re.sub(r"line \d+ column \d+ \(char \d+\)", "line L column C (char N)", text)
    return " ".join(text.split())


CASES: dict[str, Case] = {}
RESULTS: dict[str, Observed] = {}


def case(group: str, what: str):
    """Register a case function ``f(env) -> Observed`` under its name."""

    def register(fn: Callable[[Env], Observed]) -> Callable[[Env], Observed]:
        CASES[fn.__name__] = Case(fn.__name__, group, what, fn)
        return fn

    return register


# ======================================================================================= images
# Each single-file case: label a good folder, add the file and a good new image, label again. The file is
# labelled (odd but valid), or skipped with a line naming it; the earlier masks stay byte for byte; the
# widget's folder open (a Session over the folder) reads it the same way. The GUI test in
# test_gui_widget.py opens all of IMAGE_FILES in the widget itself.


def _save(name: str, img: Image.Image, **kw) -> Callable[[Path], str]:
    def add(folder: Path) -> str:
        img.save(folder / name, **kw)
        return name

    return add


def _write(name: str, data: bytes) -> Callable[[Path], str]:
    def add(folder: Path) -> str:
        (folder / name).write_bytes(data)
        return name

    return add


def _tiff(name: str, arr: np.ndarray, **kw) -> Callable[[Path], str]:
    def add(folder: Path) -> str:
        import tifffile

        tifffile.imwrite(folder / name, arr, **kw)
        return name

    return add


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _corrupt_header() -> bytes:
    data = bytearray(_encoded(photo(8, 48, 64), "PNG"))
    data[12:29] = b"\xff" * 17  # the IHDR chunk
    return bytes(data)


def _huge_png(name: str, width: int, height: int) -> Callable[[Path], str]:
    """A valid grey PNG of ``width x height`` written row by row (the pixels never sit in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    def add(folder: Path) -> str:
        z, row, parts = zlib.compressobj(9), b"\x00" * (width + 1), []
        for _ in range(height):
            parts.append(z.compress(row))
        parts.append(z.flush())
        with open(folder / name, "wb") as fh:
            fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
            fh.write(chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
        return name

    return add


def _gif(name: str) -> Callable[[Path], str]:
    def add(folder: Path) -> str:
        frames = [photo(16 + i, 48, 64) for i in range(3)]
        frames[0].save(folder / name, save_all=True, append_images=frames[1:], duration=100)
        return name

    return add


def _exif_rotated(name: str) -> Callable[[Path], str]:
    def add(folder: Path) -> str:
        exif = Image.Exif()
        exif[274] = 6  # stored 48 wide and 64 high; orientation 6 shows it 64 wide and 48 high
        photo(21, 64, 48).save(folder / name, exif=exif.tobytes())
        return name

    return add


def _symlink_loop(name: str) -> Callable[[Path], str]:
    def add(folder: Path) -> str:
        os.symlink(name, folder / name)
        return name

    return add


def _deep_png() -> Image.Image:
    return Image.fromarray(np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20)


def _float_rgb() -> np.ndarray:
    arr = np.asarray(photo(10, 48, 64)).astype(np.float32) / 255
    arr[0, 0, 0] = np.nan
    return arr


def _half_transparent() -> Image.Image:
    img = photo(11, 48, 64).convert("RGBA")
    img.putalpha(128)
    return img


SHOWN = (48, 64)


@dataclass(frozen=True)
class ImageFile:
    """One single-file image case: ``add(folder)`` writes it; ``shape`` is the upright ``(H, W)`` it must be
    read at, or None when it is skipped with a line matching ``reason`` (or as not an image, if reason is '')."""

    id: str
    what: str
    add: Callable[[Path], str]
    shape: tuple[int, int] | None
    reason: str = ""


IMAGE_CASES = [
    ImageFile("zero_byte", "0-byte file `empty.png`", _write("empty.png", b""), None, "empty file"),
    ImageFile("truncated_jpeg", "truncated JPEG (its first 1200 bytes)",
              _write("cut.jpg", _encoded(photo(7, 48, 64), "JPEG")[:1200]), None, "truncated"),
    ImageFile("corrupt_png_header", "PNG with a corrupt header (IHDR bytes overwritten)",
              _write("broken.png", _corrupt_header()), None, "header is corrupt"),
    ImageFile("text_named_png", "a text file named `notes.png`", _write("notes.png", b"shopping list\nmilk\n"),
              None, "not an image"),
    ImageFile("png_16bit", "16-bit grey PNG", _save("deep.png", _deep_png()), SHOWN),
    ImageFile("tiff_16bit", "16-bit RGB TIFF",
              _tiff("deep.tif", np.asarray(photo(9, 48, 64)).astype(np.uint16) * 257, photometric="rgb"), SHOWN),
    ImageFile("tiff_float32", "float32 TIFF (values 0..1 and a NaN)", _tiff("float.tif", _float_rgb(),
                                                                            photometric="rgb"), SHOWN),
    ImageFile("rgba", "RGBA PNG, half transparent", _save("alpha.png", _half_transparent()), SHOWN),
    ImageFile("cmyk_jpeg", "CMYK JPEG", _save("print.jpg", photo(12, 48, 64).convert("CMYK")), SHOWN),
    ImageFile("grayscale", "grayscale JPEG", _save("grey.jpg", photo(13, 48, 64).convert("L")), SHOWN),
    ImageFile("palette", "palette PNG",
              _save("pal.png", photo(14, 48, 64).convert("P", palette=Image.Palette.ADAPTIVE)), SHOWN),
    ImageFile("one_pixel", "1 x 1 pixel PNG", _save("dot.png", Image.new("RGB", (1, 1), (200, 100, 0))), (1, 1)),
    ImageFile("strip", "3 x 5000 pixel strip", _save("strip.png", photo(15, 3, 5000)), (3, 5000)),
    ImageFile("huge", "12000 x 12000 PNG (144 megapixels)", _huge_png("huge.png", 12000, 12000), None,
              "image too large"),
    ImageFile("animated_gif", "animated GIF", _gif("anim.gif"), None),
    ImageFile("multipage_tiff", "multi-page TIFF (the first page is read)",
              _tiff("stack.tif", np.stack([np.asarray(photo(20 + i, 48, 64)) for i in range(3)]),
                    photometric="rgb"), SHOWN),
    ImageFile("exif_rotated", "JPEG stored 48 x 64 (W x H) with EXIF orientation 6: shown 64 x 48",
              _exif_rotated("turned.jpg"), SHOWN),
    ImageFile("symlink_loop", "symbolic link pointing to itself `loop.png`", _symlink_loop("loop.png"), None,
              "symbolic link"),
    ImageFile("unicode_name", "unicode name `café 北京.png`", _save("café 北京.png", photo(22, 48, 64)), SHOWN),
    ImageFile("space_name", "name with spaces `my photo 1.png`", _save("my photo 1.png", photo(23, 48, 64)), SHOWN),
]
IMAGE_FILES = [(c.add, c.shape) for c in IMAGE_CASES]


def _image_case(env: Env, c: ImageFile) -> Observed:
    from napari_wfss.images import ImageReadError
    from napari_wfss.session import Session

    folder, tags = env.folder()
    out = env.tmp / "out"
    assert env.label(folder, tags, out).code == 0
    before = snapshot(out)
    rel = c.add(folder)
    photo(99, 48, 64).save(folder / "zz_fresh.png")  # a good image in the same run: it is labelled all the same
    run = env.label(folder, tags, out)
    untouched(before, out)
    with Session.create(folder, env.tmp / "widget-project") as session:  # the widget's "Open folder"
        listed = rel in session.images
        if c.shape is not None:
            assert run.code == 0
            line = run.line("labelled 2 image(s)")
            done = Session.open(out / ".wfss-project", read_only=True)
            labels, image = done.current_label_map(rel), done.read_image(rel)
            assert labels is not None and labels.shape == image.shape[:2] == c.shape, (labels, image.shape)
            assert session.read_image(rel).shape[:2] == c.shape
            coco = json.loads((out / "coco.json").read_text(encoding="utf-8"))
            assert done.key(rel) in {Path(im["file_name"]).stem for im in coco["images"]}
            return Observed("image", "", "label, open", f"labelled: mask {c.shape[0]} x {c.shape[1]} (H x W)", line)
        if c.reason:
            assert run.code == 0 and run.line("labelled 1 image(s)")
            line = run.line("failed:", rel)
            assert re.search(c.reason, line), line
            assert listed
            with pytest.raises(ImageReadError, match=c.reason):
                session.read_image(rel)
            return Observed("image", "", "label, open", "skipped, listed as failed (exit 0)", line)
        line = run.line("not images", rel)
        assert run.code == 0 and run.line("labelled 1 image(s)") and not listed
        return Observed("image", "", "label, open", "skipped as not an image (exit 0)", line)


for _c in IMAGE_CASES:
    CASES[_c.id] = Case(_c.id, "image", _c.what, lambda env, c=_c: _image_case(env, c))


@case("image", "`a.jpg` and `a.png` side by side")
def same_stem(env):
    from napari_wfss.session import Session

    folder, tags = env.folder()
    photo(24, 48, 64).save(folder / "a.jpg")
    photo(25, 48, 64).save(folder / "a.png")
    out = env.tmp / "out"
    run = env.label(folder, tags, out)
    assert run.code == 0
    done = Session.open(out / ".wfss-project", read_only=True)
    assert done.key("a.jpg") != done.key("a.png")
    assert done.current_label_map("a.jpg") is not None and done.current_label_map("a.png") is not None
    return Observed("image", "", "label", f"both labelled, masks {done.key('a.jpg')}.png and "
                    f"{done.key('a.png')}.png", run.line("labelled 3 image(s)"))


@case("image", "an image in a sub-folder `nested/deep.png`")
def nested(env):
    folder, tags = env.folder()
    (folder / "nested").mkdir()
    photo(26, 48, 64).save(folder / "nested" / "deep.png")
    run = env.label(folder, tags, env.tmp / "out")
    assert run.code == 0
    return Observed("image", "", "label", "not searched, said so (exit 0)", run.line("sub-folder", "nested"))


@case("image", "empty folder")
def empty_folder(env):
    (env.tmp / "none").mkdir()
    tags = env.tmp / "tags.csv"
    tags.write_text("image,class\na.png,coin\n")
    run = env.label(env.tmp / "none", tags, env.tmp / "out")
    assert run.code == 2 and not (env.tmp / "out").exists()
    return Observed("image", "", "label", "refused (exit 2), nothing written", run.line("no images in"))


# ========================================================================================= tags


def _tags_case(env: Env, text: str | bytes, expect: str, *needles: str) -> Observed:
    """Label a fresh folder with this tags file; ``expect`` labelled|refused (exit 2, nothing written)."""
    folder, _ = env.folder(untagged=1)
    tags = env.tmp / "tags.csv"
    if isinstance(text, bytes):
        tags.write_bytes(text)
    else:
        tags.write_text(text, encoding="utf-8")
    out = env.tmp / "out"
    run = env.label(folder, tags, out)
    if expect == "refused":
        assert run.code == 2, run.text
        assert not list(out.glob("masks/*")), "a refused run wrote masks"
        return Observed("tags", "", "label", "refused (exit 2), nothing labelled", run.line(*needles))
    assert run.code == 0, run.text
    return Observed("tags", "", "label", "labelled", run.line(*needles))


@case("tags", "no header row")
def tags_no_header(env):
    return _tags_case(env, "coin_00.png,coin\ncoin_01.png,coin\n", "labelled", "labelled 1 image(s)")


@case("tags", "a row naming an image that is not in the folder")
def tags_unknown_image(env):
    return _tags_case(env, "image,class\ncoin_00.png,coin\nzebra.png,coin\n", "refused", "tags.csv:3",
                      "zebra.png")


@case("tags", "a class name with quotes (`\"\"\"old\"\" coin\"`)")
def tags_quoted(env):
    observed = _tags_case(env, 'image,class\ncoin_00.png,"""old"" coin"\ncoin_01.png,"""old"" coin"\n', "labelled",
                          "labelled 1 image(s)")
    classes = (env.tmp / "out" / "classes.txt").read_text(encoding="utf-8")
    assert '"old" coin' in classes
    return observed


@case("tags", "a class name with a comma (`\"big, old\"`)")
def tags_comma(env):
    return _tags_case(env, 'image,class\ncoin_00.png,"big, old"\ncoin_01.png,coin\n', "refused", "tags.csv:2",
                      "','")


@case("tags", "UTF-8 byte-order mark")
def tags_bom(env):
    return _tags_case(env, "\ufeffimage,class\ncoin_00.png,coin\ncoin_01.png,coin\n".encode(), "labelled",
                      "labelled 1 image(s)")


@case("tags", "CRLF line ends")
def tags_crlf(env):
    return _tags_case(env, b"image,class\r\ncoin_00.png,coin\r\ncoin_01.png,coin\r\n", "labelled",
                      "labelled 1 image(s)")


@case("tags", "a row with an empty class (`coin_01.png,`)")
def tags_empty_class(env):
    return _tags_case(env, "image,class\ncoin_00.png,coin\ncoin_01.png,\n", "refused", "tags.csv:3")


@case("tags", "a class with one tagged image")
def tags_one_image_class(env):
    return _tags_case(env, "image,class\ncoin_00.png,coin\ncoin_01.png,ring\n", "labelled", "labelled 1 image(s)")


@case("tags", "3000 classes")
def tags_thousands(env):
    rows = "".join(f"coin_{i % 2:02d}.png,class{i}\n" for i in range(3000))
    return _tags_case(env, "image,class\n" + rows, "refused", "classes")


@case("tags", "image paths outside the folder (`../x.png`, absolute)")
def tags_outside(env):
    photo(27, 48, 64).save(env.tmp / "secret.png")
    text = f"image,class\ncoin_00.png,coin\n../secret.png,coin\n{env.tmp / 'secret.png'},coin\n"
    return _tags_case(env, text, "refused", "tags.csv:3", "../secret.png")


# ====================================================================================== outputs


@case("output", "`--out` inside the image folder")
def out_inside(env):
    folder, tags = env.folder()
    out = folder / "labels"
    first = env.label(folder, tags, out)
    assert first.code == 0
    before = snapshot(out)
    again = env.label(folder, tags, out)
    untouched(before, out)
    assert again.code == 0
    return Observed("output", "", "label", "labelled; a rerun reads none of its own outputs as input",
                    again.line("labelled 0 image(s), 1 already done"))


@case("output", "`--out` names a file")
def out_is_file(env):
    folder, tags = env.folder()
    (env.tmp / "out.txt").write_text("a file")
    run = env.label(folder, tags, env.tmp / "out.txt")
    assert run.code == 2 and (env.tmp / "out.txt").read_text() == "a file"
    return Observed("output", "", "label", "refused (exit 2), the file untouched", run.line("--out is a file"))


def _failing_writes(env: Env, code: int, after: int = 0) -> Callable[[], None]:
    """Make every new file after the first ``after`` fail with ``OSError(code)``; returns the undo."""
    from napari_wfss import atomic

    real, calls = atomic._new_temp, []

    def new_temp(dest: Path) -> Path:
        calls.append(dest)
        if len(calls) > after:
            raise OSError(code, os.strerror(code), str(dest))
        return real(dest)

    env.monkeypatch.setattr(atomic, "_new_temp", new_temp)
    return lambda: env.monkeypatch.setattr(atomic, "_new_temp", real)


@case("output", "read-only output folder (writes fail with EROFS; root ignores chmod)")
def out_read_only(env):
    folder, tags = env.folder()
    out = env.tmp / "out"
    assert env.label(folder, tags, out).code == 0
    before = snapshot(out)
    photo(28, 48, 64).save(folder / "other_01.png")
    undo = _failing_writes(env, errno.EROFS)
    run = env.label(folder, tags, out)
    undo()
    untouched(before, out)
    assert run.code == 2
    return Observed("output", "", "label", "refused (exit 2), earlier results kept",
                    run.line("cannot write the output"))


@case("output", "disk full while writing (ENOSPC), then a rerun")
def out_disk_full(env):
    folder, tags = env.folder(untagged=2)
    out = env.tmp / "out"
    undo = _failing_writes(env, errno.ENOSPC, after=6)
    run = env.label(folder, tags, out)
    undo()
    assert run.code == 2
    again = env.label(folder, tags, out)
    assert again.code == 0 and "already done" in again.line("labelled")
    return Observed("output", "", "label", "refused (exit 2); the rerun resumes", run.line("disk full"))


@case("output", "two runs on one output at once")
def out_two_runs(env):
    from filelock import FileLock

    from napari_wfss.batch import LOCK_NAME

    folder, tags = env.folder()
    out = env.tmp / "out"
    out.mkdir()
    with FileLock(out / LOCK_NAME):  # the first run, still writing
        run = env.label(folder, tags, out)
    assert run.code == 2 and not list(out.glob("masks/*"))
    return Observed("output", "", "label", "second run refused (exit 2)", run.line("another `wfss label` run"))


# ======================================================================================= models


@case("model", "`--model` path that does not exist")
def model_missing(env):
    folder, tags = env.folder()
    run = env.wfss("label", folder, "--tags", tags, "--out", env.tmp / "out", "--model", env.tmp / "nope.json")
    assert run.code == 2
    return Observed("model", "", "label --model", "refused (exit 2)", run.line("nope.json"))


class _Boom:
    def __reduce__(self):
        return (os.mkdir, ("PWNED",))


def _evil_pt(path: Path) -> Path:
    import pickle

    path.write_bytes(pickle.dumps({"state_dict": _Boom()}))
    return path


@case("model", "a pickle `.pt` whose unpickling would run code (`--model`)")
def model_pickle_label(env):
    folder, tags = env.folder()
    evil = _evil_pt(env.tmp / "evil.pt")
    env.monkeypatch.chdir(env.tmp)
    run = env.wfss("label", folder, "--tags", tags, "--out", env.tmp / "out", "--model", evil)
    assert run.code == 2 and not (env.tmp / "PWNED").exists()
    return Observed("model", "", "label --model", "refused (exit 2), no code run", run.line("evil.pt"))


@case("model", "the same pickle given to `wfss convert-tlg`")
def model_pickle_convert(env):
    evil = _evil_pt(env.tmp / "best_model.pt")
    env.monkeypatch.chdir(env.tmp)
    run = env.wfss("convert-tlg", evil, env.tmp / "out.safetensors")
    assert run.code == 2 and not (env.tmp / "PWNED").exists() and not (env.tmp / "out.safetensors").exists()
    return Observed("model", "", "convert-tlg", "refused (exit 2), no code run, nothing written",
                    run.line("best_model.pt"))


def _copy_model(env: Env) -> tuple[Path, Path]:
    src = Path(env.model)
    json_path, weights = env.tmp / "m" / "model.json", env.tmp / "m" / "model.safetensors"
    json_path.parent.mkdir()
    json_path.write_text(src.read_text())
    weights.write_bytes(src.with_suffix(".safetensors").read_bytes())
    return json_path, weights


@case("model", "safetensors with a wrongly shaped tensor")
def model_wrong_shapes(env):
    from safetensors.numpy import load_file, save_file

    json_path, weights = _copy_model(env)
    tensors = load_file(weights)
    name = next(k for k in sorted(tensors) if not k.startswith("backbone.") and tensors[k].ndim >= 2)
    tensors[name] = np.zeros((3, 3), tensors[name].dtype)
    save_file(tensors, weights)
    meta = json.loads(json_path.read_text())  # a consistent pair: the checksum names the new file
    meta["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    json_path.write_text(json.dumps(meta))
    folder, tags = env.folder()
    run = env.wfss("label", folder, "--tags", tags, "--out", env.tmp / "out", "--model", json_path)
    assert run.code == 2
    return Observed("model", "", "label --model", "refused (exit 2)", run.line(name))


@case("model", "model.json with bad fields (`image_size: \"abc\"`, unknown backbone)")
def model_bad_json(env):
    json_path, _ = _copy_model(env)
    meta = json.loads(json_path.read_text())
    config = meta.get("config", meta)
    config["image_size"] = "abc"
    json_path.write_text(json.dumps(meta))
    folder, tags = env.folder()
    run = env.wfss("label", folder, "--tags", tags, "--out", env.tmp / "out", "--model", json_path)
    assert run.code == 2
    return Observed("model", "", "label --model", "refused (exit 2)", run.line("image_size"))


# ===================================================================================== projects


@case("project", "truncated project.json (widget folder open and `wfss label` rerun)")
def project_truncated(env):
    from napari_wfss.session import Session, SessionError

    folder, tags = env.folder()
    out = env.tmp / "out"
    assert env.label(folder, tags, out).code == 0
    assert env.label(folder, tags, out).code == 0  # a second save: the backup holds a complete project
    project = out / ".wfss-project" / "project.json"
    text = project.read_text()
    cut = text.index('"images"') + 30  # inside the first image record: the same damage whatever the tmp path
    project.write_text(text[:cut])
    with pytest.raises(SessionError, match="previous version is kept"):
        Session.open(out / ".wfss-project")
    run = env.label(folder, tags, out)
    assert run.code == 2 and project.read_text() == text[:cut]  # kept for the user to look at
    return Observed("project", "", "open, label", "refused (exit 2), backup named", run.line("project.json"))


@case("project", "image paths in project.json outside the folder (`../`, absolute)")
def project_outside(env):
    folder, tags = env.folder()
    out = env.tmp / "out"
    assert env.label(folder, tags, out).code == 0
    project = out / ".wfss-project" / "project.json"
    data = json.loads(project.read_text())
    secret = env.tmp / "secret.png"
    photo(29, 48, 64).save(secret)
    before = secret.read_bytes()
    entries = data["images"]
    first = entries[0] if isinstance(entries, list) else entries[next(iter(entries))]
    first["path"] = "../secret.png"
    project.write_text(json.dumps(data))
    run = env.label(folder, tags, out)
    assert run.code == 2 and secret.read_bytes() == before
    return Observed("project", "", "label", "refused (exit 2), the outside file untouched", run.line("secret.png"))


# ============================================================================= dataset loading


def _export(env: Env) -> Path:
    """An export of accepted masks (two images per class, two classes), as the widget writes it."""
    from napari_wfss.export import export_session
    from napari_wfss.session import Session

    folder = env.tmp / "project-images"
    folder.mkdir()
    for i in range(6):
        photo(40 + i, 48, 64).save(folder / f"img_{i}.png")
    with Session.create(folder, env.tmp / "p") as session:
        session.add_class("coin")
        session.add_class("ring")
        for i, rel in enumerate(session.images):
            cls = "coin" if i % 2 else "ring"
            mask = np.zeros((48, 64), np.uint8)
            mask[10:30, 20:40] = session.classes.get(cls).id
            session.accept(rel, mask)
        export_session(session, env.tmp / "export")
    return env.tmp / "export"


@case("dataset", "corrupt mask file in an export (`wfss train --init`)")
def dataset_corrupt_mask(env):
    export = _export(env)
    mask = sorted((export / "masks").glob("*.png"))[0]
    mask.write_bytes(b"\x89PNG garbage")
    run = env.wfss("train", "--init", env.model, "--data", export, "--out", env.tmp / "tuned", "--steps", "2",
                   "--device", "cpu")
    assert run.code == 2 and not (env.tmp / "tuned").exists()
    return Observed("dataset", "", "train --init", "refused (exit 2), nothing written", run.line(mask.name))


@case("dataset", "manifest.json naming an image outside the export (`../secret`)")
def dataset_manifest_outside(env):
    export = _export(env)
    photo(30, 48, 64).save(env.tmp / "secret.png")
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["images"].append({**manifest["images"][0], "key": "../secret"})
    (export / "manifest.json").write_text(json.dumps(manifest))
    run = env.wfss("train", "--init", env.model, "--data", export, "--out", env.tmp / "tuned", "--steps", "2",
                   "--device", "cpu")
    assert run.code == 2 and not (env.tmp / "tuned").exists()
    return Observed("dataset", "", "train --init", "refused (exit 2), nothing written",
                    run.line("../secret"))


@case("dataset", "truncated image in a dataset (`wfss eval`)")
def dataset_truncated_image(env):
    export = _export(env)
    image = sorted((export / "images").glob("*.png"))[0]
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 3])
    run = env.wfss("eval", "--data", export, "--model", env.model, "--test-classes", "coin,ring", "--shots", "1",
                   "--episodes", "4", "--device", "cpu")
    assert run.code == 2
    return Observed("dataset", "", "eval", "refused (exit 2)", run.line(image.name))


@case("dataset", "EXIF-rotated JPEG in an export (image and mask upright for training)")
def dataset_exif(env):
    from hhn.data.generic import GenericDataset

    export = _export(env)
    image = sorted((export / "images").glob("*.png"))[0]
    mask = export / "masks" / f"{image.stem}.png"
    upright = np.asarray(Image.open(image).convert("RGB"))
    exif = Image.Exif()
    exif[274] = 6  # stored turned by -90 degrees: orientation 6 turns it back
    Image.fromarray(np.rot90(upright, 1).copy()).save(image.with_suffix(".jpg"), exif=exif.tobytes())
    image.unlink()
    ds = GenericDataset(export)
    loaded = ds.load_image(image.stem)
    assert loaded.shape[:2] == ds.load_label(image.stem).shape == np.asarray(Image.open(mask)).shape
    return Observed("dataset", "", "train/eval data loading", f"read upright: image and mask {loaded.shape[0]} x "
                    f"{loaded.shape[1]}", "(no message: the orientation is applied)")


# ========================================================================================= runs


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input(case_id, tmp_path, tiny_model, one_torch_thread, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    c = CASES[case_id]
    observed = c.run(Env(tmp_path, tiny_model, monkeypatch))
    observed.group, observed.what = c.group, c.what
    observed.message = one_line(observed.message)
    RESULTS[case_id] = observed


def _table(results: dict[str, Observed]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = ["| # | group | input | through | outcome | message |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(results.values(), 1):
        message = cell(r.message) if r.message.startswith("(") else f"`{cell(r.message)}`"
        rows.append(f"| {i} | {r.group} | {cell(r.what)} | {r.surface} | {cell(r.outcome)} | {message} |")
    return "\n".join(rows)


def test_reliability_doc_shows_what_this_run_observed():
    """docs/RELIABILITY.md's table is the observed one (every case that ran in this session is checked)."""
    ran = {cid: RESULTS[cid] for cid in CASES if cid in RESULTS}
    assert ran, "run the whole module: the cases fill the table"
    begin, end = f"<!-- {MARKER}:BEGIN -->", f"<!-- {MARKER}:END -->"
    doc = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    if os.environ.get("WFSS_WRITE_RELIABILITY") == "1" and len(ran) == len(CASES):
        head, _, rest = doc.partition(begin)
        _, _, tail = rest.partition(end)
        DOC.write_text(f"{head}{begin}\n{_table(ran)}\n{end}{tail}", encoding="utf-8")
        doc = DOC.read_text(encoding="utf-8")
    documented = doc.partition(begin)[2].partition(end)[0]
    for line in _table(ran).splitlines()[2:]:
        row = line.split(" | ", 1)[1]  # without the number: a subset run numbers its rows differently
        assert row in documented, f"docs/RELIABILITY.md is out of date (see the module doc); missing:\n{row}"
