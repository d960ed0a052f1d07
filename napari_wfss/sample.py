"""The sample folder: a small labelling task made from scikit-image's bundled photos (no download).

Three classes, each a handful of crops of one bundled photo: ``coin`` (tiles of ``data.coins()``),
``cat`` (crops of ``data.chelsea()``) and ``cup`` (crops of ``data.coffee()``), plus three texture
tiles (brick, grass, gravel) that show none of them, and one ``mix`` image (a cup photo with a coin
tile pasted in) that carries two classes. ``tags.csv`` tags two images per class and the mixed
image; every other image is left for the model to propose.

No Qt and no torch here: ``wfss sample OUT`` and the napari sample-data command both call
:func:`make_sample_folder`.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np

from hhn.errors import UserError
from napari_wfss.atomic import atomic_write_bytes, atomic_write_text

SAMPLE_CLASSES = ("coin", "cat", "cup")


def _rgb(img: np.ndarray) -> np.ndarray:
    """Grey ``(H, W)`` or RGB ``(H, W, 3)`` uint8 -> RGB ``(H, W, 3)`` uint8."""
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]


def _crop(img: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int], flip: bool = False) -> np.ndarray:
    """Crop ``box`` = (top, left, height, width), mirror it if asked, resize to ``size`` = (h, w); RGB uint8."""
    from PIL import Image

    top, left, h, w = box
    crop = _rgb(img)[top : top + h, left : left + w]
    if flip:
        crop = crop[:, ::-1]
    out = Image.fromarray(np.ascontiguousarray(crop)).resize(size[::-1], Image.Resampling.BILINEAR)
    return np.asarray(out)


def sample_images() -> dict[str, np.ndarray]:
    """Return the sample images by file stem; each is RGB uint8 ``(H, W, 3)`` with H, W between 160 and 240."""
    from skimage import data

    coins, cat, cup = data.coins(), data.chelsea(), data.coffee()  # (303, 384) grey, (300, 451, 3), (400, 600, 3)
    images = {}
    for i, (top, left) in enumerate([(0, 0), (0, 112), (0, 224), (143, 0), (143, 112), (143, 224)]):
        images[f"coin_{i:02d}"] = _crop(coins, (top, left, 160, 160), (160, 160))
    for i, (box, flip) in enumerate([((0, 0, 300, 451), False), ((0, 0, 300, 451), True), ((0, 40, 300, 360), False),
                                     ((30, 0, 270, 400), True), ((0, 60, 300, 391), False)]):
        images[f"cat_{i:02d}"] = _crop(cat, box, (160, 240), flip)
    for i, (box, flip) in enumerate([((0, 0, 400, 600), False), ((0, 0, 400, 600), True), ((0, 50, 400, 500), True)]):
        images[f"cup_{i:02d}"] = _crop(cup, box, (160, 240), flip)
    for name in ("brick", "grass", "gravel"):
        images[f"texture_{name}"] = _crop(getattr(data, name)(), (96, 96, 320, 320), (160, 160))
    mix = _crop(cup, (0, 50, 400, 500), (160, 200)).copy()
    mix[-56:-4, 4:56] = _crop(coins, (152, 310, 72, 72), (52, 52))  # one coin in the lower-left corner
    images["mix_00"] = mix
    return images


def sample_tags() -> list[tuple[str, str]]:
    """Return the ``(image file name, class name)`` rows of ``tags.csv``: a few tagged images per class."""
    rows = [(f"{cls}_{i:02d}.png", cls) for cls in SAMPLE_CLASSES for i in range(2)]
    return rows + [("mix_00.png", "cup"), ("mix_00.png", "coin")]


def make_sample_folder(out: str | Path) -> Path:
    """Write ``OUT/images/*.png`` and ``OUT/tags.csv`` (header ``image,class``); return ``OUT``.

    Rerunning over an earlier sample folder rewrites it. A non-empty folder without ``tags.csv``
    is refused with a :class:`~hhn.errors.UserError`, so user files are never overwritten.
    """
    from PIL import Image

    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not (out / "tags.csv").is_file():
        raise UserError(f"{out} exists and is not an earlier sample folder; give a new or empty folder")
    for stem, img in sample_images().items():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        atomic_write_bytes(out / "images" / f"{stem}.png", buf.getvalue())
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image", "class"])
    writer.writerows(sample_tags())
    atomic_write_text(out / "tags.csv", text.getvalue())
    return out


def run_sample_cli(args: argparse.Namespace) -> int:
    """``wfss sample OUT``: write the sample folder and say what to run next."""
    out = make_sample_folder(args.out)
    n = len(list((out / "images").glob("*.png")))
    print(f"wrote {n} images to {out / 'images'} and {len(sample_tags())} tags to {out / 'tags.csv'}")
    print(f"next: wfss label {out / 'images'} --tags {out / 'tags.csv'} --out {out / 'out'}")
    return 0
