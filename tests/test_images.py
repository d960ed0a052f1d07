"""Image listing and reading (formats, bit depths, alpha, palettes, EXIF/TIFF orientation), label map files."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from hhn.errors import UserError
from napari_wfss.images import (
    HIGH_PERCENTILE,
    LOW_PERCENTILE,
    ImageFolderError,
    ImageReadError,
    LabelMapError,
    as_label_map,
    file_sha1,
    image_size,
    list_images,
    read_image,
    read_label_png,
    scale_to_uint8,
    write_label_png,
    write_label_tiff,
)

RNG = np.random.default_rng(0)


def _rgb(h=12, w=17):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _blocks(h=16, w=24):
    """An asymmetric image of flat colour blocks (survives JPEG; every flip/rotation changes it)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 3] = (255, 0, 0)
    a[: h // 2, w // 3 :] = (0, 255, 0)
    a[h // 2 :, : w // 2] = (0, 0, 255)
    a[h // 2 :, w // 2 :] = (255, 255, 0)
    return a


# Independent statement of the EXIF orientation meanings (what a viewer shows for stored pixels a).
EXPECTED_ORIENTATION = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored horizontally
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored vertically
    5: lambda a: np.transpose(a, (1, 0, 2)),  # transposed
    6: lambda a: np.rot90(a, -1),  # stored rotated: show turned 90 degrees clockwise
    7: lambda a: np.transpose(a[::-1, ::-1], (1, 0, 2)),  # transverse
    8: lambda a: np.rot90(a, 1),  # turned 90 degrees counter-clockwise
}


# ---------------------------------------------------------------------------------------- listing


def test_list_images_natural_order_hidden_and_non_images_skipped(tmp_path):
    for name in ["img10.png", "img2.JPG", "img1.tiff", "b.webp", "c.bmp", "d.jpeg", "e.tif"]:
        (tmp_path / name).write_bytes(b"x")
    for name in [".hidden.png", "notes.txt", "mask.npy"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".wfss").mkdir()
    (tmp_path / ".wfss" / "m.png").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.png").write_bytes(b"x")
    got = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert got == ["b.webp", "c.bmp", "d.jpeg", "e.tif", "img1.tiff", "img2.JPG", "img10.png"]
    rec = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)]
    assert "sub/z.png" in rec and ".wfss/m.png" not in rec and len(rec) == len(got) + 1


def test_list_images_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(ImageFolderError, match="not found") as info:
        list_images(tmp_path / "nope")
    assert isinstance(info.value, UserError)


# ------------------------------------------------------------------------------------ 8-bit formats


@pytest.mark.parametrize("ext,kwargs,exact", [
    (".png", {}, True),
    (".bmp", {}, True),
    (".webp", {"lossless": True}, True),
    (".tif", {}, True),
    (".jpg", {"quality": 95}, False),
])
def test_read_rgb_formats(tmp_path, ext, kwargs, exact):
    a = _blocks() if not exact else _rgb()
    p = tmp_path / f"x{ext}"
    Image.fromarray(a).save(p, **kwargs)
    out = read_image(p)
    assert out.dtype == np.uint8 and out.shape == a.shape
    if exact:
        np.testing.assert_array_equal(out, a)
    else:  # JPEG: chroma subsampling blurs block edges; the flat blocks themselves survive
        assert np.median(np.abs(out.astype(int) - a)) <= 3


def test_grey_is_repeated_to_three_channels(tmp_path):
    g = RNG.integers(0, 256, (9, 11), dtype=np.uint8)
    Image.fromarray(g).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (9, 11, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)


def test_palette_png_expands_to_its_colours(tmp_path):
    idx = RNG.integers(0, 4, (8, 10), dtype=np.uint8)
    colours = np.array([[10, 20, 30], [200, 0, 0], [0, 150, 0], [1, 2, 250]], np.uint8)
    im = Image.fromarray(idx, mode=None)
    im.putpalette(colours.ravel().tolist())
    assert im.mode == "P"
    im.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), colours[idx])


def test_rgba_is_composited_on_white(tmp_path):
    a = np.zeros((2, 3, 4), np.uint8)
    a[..., :3] = (100, 50, 0)
    a[..., 3] = [[0, 255, 128], [255, 0, 255]]
    Image.fromarray(a).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png").astype(int)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], [100, 50, 0])
    alpha = 128 / 255
    np.testing.assert_allclose(out[0, 2], np.array([100, 50, 0]) * alpha + 255 * (1 - alpha), atol=1)


def test_grey_alpha_and_palette_transparency(tmp_path):
    la = np.stack([np.full((3, 3), 40, np.uint8), np.array([[0, 255, 255]] * 3, np.uint8)], -1)
    Image.fromarray(la, mode=None).save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    np.testing.assert_array_equal(out[:, 0], 255)
    np.testing.assert_array_equal(out[:, 1:], 40)
    p = Image.fromarray(np.array([[0, 1]], np.uint8))
    p.putpalette([5, 6, 7, 80, 90, 100])
    p.save(tmp_path / "pt.png", transparency=0)
    np.testing.assert_array_equal(read_image(tmp_path / "pt.png"), [[[255, 255, 255], [80, 90, 100]]])


# ------------------------------------------------------------------------------- deep bit depths


def _percentile_scaled(values):
    lo, hi = np.percentile(values.astype(float), [LOW_PERCENTILE, HIGH_PERCENTILE])
    return np.clip(np.rint((values.astype(float) - lo) * 255 / (hi - lo)), 0, 255).astype(np.uint8)


def test_16bit_grey_png_uses_robust_percentiles(tmp_path):
    g = RNG.integers(1000, 3000, (40, 50)).astype(np.uint16)
    g[0, 0] = 65000  # one hot pixel must not squash the contrast
    Image.fromarray(g).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = read_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[..., 0], _percentile_scaled(g))
    assert out[..., 1:].tolist() == np.repeat(out[..., :1], 2, -1).tolist()
    assert out.min() == 0 and out.max() == 255 and np.median(out) > 60


def test_16bit_rgb_tiff_one_range_for_all_channels(tmp_path):
    a = RNG.integers(0, 4096, (20, 30, 3)).astype(np.uint16)
    a[..., 2] //= 2  # a dimmer blue must stay dimmer (colour balance kept)
    tifffile.imwrite(tmp_path / "c16.tif", a, photometric="rgb")
    out = read_image(tmp_path / "c16.tif")
    np.testing.assert_array_equal(out, _percentile_scaled(a))
    assert out[..., 2].mean() < 0.7 * out[..., 0].mean()


def test_float_and_16bit_rgba_tiff(tmp_path):
    f = RNG.random((10, 12)).astype(np.float32) * 7.0 - 3.0
    tifffile.imwrite(tmp_path / "f.tif", f)
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif")[..., 0], _percentile_scaled(f))
    rgba = np.zeros((4, 4, 4), np.uint16)
    rgba[..., :3] = RNG.integers(0, 60000, (4, 4, 3))
    rgba[..., 3] = 0
    rgba[0, 0, 3] = 65535
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    out = read_image(tmp_path / "rgba.tif")
    assert (out[1:, 1:] == 255).all()  # transparent -> white
    np.testing.assert_array_equal(out[0, 0], _percentile_scaled(rgba[..., :3])[0, 0])


def test_scale_to_uint8_edge_cases():
    u8 = RNG.integers(0, 256, (3, 3), dtype=np.uint8)
    assert scale_to_uint8(u8) is u8
    np.testing.assert_array_equal(scale_to_uint8(np.array([True, False])), [255, 0])
    np.testing.assert_array_equal(scale_to_uint8(np.full((2, 2), 7, np.uint16)), 0)
    out = scale_to_uint8(np.array([np.nan, 0.0, 1.0, 2.0], np.float32))
    assert out[0] == 0 and out[-1] == 255


# ------------------------------------------------------------------------------------ TIFF variants


def test_multipage_tiff_reads_first_page(tmp_path):
    pages = np.stack([_rgb(), _rgb()])
    tifffile.imwrite(tmp_path / "m.tif", pages, photometric="rgb")
    assert len(tifffile.TiffFile(tmp_path / "m.tif").pages) == 2
    np.testing.assert_array_equal(read_image(tmp_path / "m.tif"), pages[0])


def test_planar_minisblack_miniswhite_palette_and_lzw_tiff(tmp_path):
    a = _rgb()
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(a, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), a)
    g = RNG.integers(0, 256, (5, 6), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "white.tif", g, photometric="miniswhite")
    np.testing.assert_array_equal(read_image(tmp_path / "white.tif")[..., 0], 255 - g)
    idx = RNG.integers(0, 3, (5, 6), dtype=np.uint8)
    pal = Image.fromarray(idx)
    pal.putpalette([9, 8, 7, 200, 100, 0, 0, 50, 250])
    pal.save(tmp_path / "pal.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "pal.tif"),
                                  np.array([[9, 8, 7], [200, 100, 0], [0, 50, 250]], np.uint8)[idx])
    Image.fromarray(a).save(tmp_path / "lzw.tif", compression="tiff_lzw")  # needs imagecodecs in tifffile
    np.testing.assert_array_equal(read_image(tmp_path / "lzw.tif"), a)


# -------------------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_honoured(tmp_path, orientation):
    a = _blocks(10, 16)
    exif = Image.Exif()
    exif[274] = orientation
    Image.fromarray(a).save(tmp_path / "o.png", exif=exif.tobytes())
    expected = EXPECTED_ORIENTATION[orientation](a)
    np.testing.assert_array_equal(read_image(tmp_path / "o.png"), expected)
    assert image_size(tmp_path / "o.png") == expected.shape[:2]


@pytest.mark.parametrize("orientation", [3, 6, 7, 8])
def test_tiff_orientation_tag_is_honoured(tmp_path, orientation):
    a = _rgb(6, 9)
    tifffile.imwrite(tmp_path / "o.tif", a, photometric="rgb", extratags=[(274, "H", 1, orientation, True)])
    expected = EXPECTED_ORIENTATION[orientation](a)
    np.testing.assert_array_equal(read_image(tmp_path / "o.tif"), expected)
    assert image_size(tmp_path / "o.tif") == expected.shape[:2]


def test_jpeg_exif_rotation(tmp_path):
    a = _blocks(16, 32)
    exif = Image.Exif()
    exif[274] = 6
    Image.fromarray(a).save(tmp_path / "r.jpg", quality=95, exif=exif.tobytes())
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (32, 16, 3)
    assert np.median(np.abs(out.astype(int) - np.rot90(a, -1))) <= 3


# --------------------------------------------------------------------------------------- failures


def test_corrupt_truncated_and_missing_files_raise_image_read_error(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not a png")
    buf = tmp_path / "full.jpg"
    Image.fromarray(_rgb(64, 64)).save(buf, quality=90)
    (tmp_path / "cut.jpg").write_bytes(buf.read_bytes()[:300])
    (tmp_path / "junk.tif").write_bytes(b"II*\x00garbage")
    for name in ["junk.png", "cut.jpg", "junk.tif", "missing.png"]:
        with pytest.raises(ImageReadError) as info:
            read_image(tmp_path / name)
        assert name in str(info.value)
        assert isinstance(info.value, UserError)
    with pytest.raises(ImageReadError, match="junk.png"):
        image_size(tmp_path / "junk.png")


def test_image_size_matches_read_image_without_decoding(tmp_path):
    Image.fromarray(_rgb(7, 13)).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "b.tif", RNG.integers(0, 9, (3, 5, 7), dtype=np.uint16),
                     photometric="minisblack")  # 3 pages
    assert image_size(tmp_path / "a.png") == (7, 13) == read_image(tmp_path / "a.png").shape[:2]
    assert image_size(tmp_path / "b.tif") == (5, 7) == read_image(tmp_path / "b.tif").shape[:2]


def test_file_sha1_is_a_content_signature(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "copy.png").write_bytes(data)
    assert file_sha1(tmp_path / "a.png") == hashlib.sha1(data).hexdigest() == file_sha1(tmp_path / "copy.png")
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    assert file_sha1(tmp_path / "a.png") != file_sha1(tmp_path / "copy.png")


# ------------------------------------------------------------------------------------- label maps


def test_label_png_is_palette_with_ids_intact(tmp_path):
    lm = RNG.integers(0, 5, (13, 21)).astype(np.int32)  # napari Labels data is int32
    lm[0, :4] = 255
    palette = bytes(RNG.integers(0, 256, 768, dtype=np.uint8))
    write_label_png(tmp_path / "m.png", lm, palette)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P"
        assert bytes(im.getpalette()) == palette
        np.testing.assert_array_equal(np.array(im), lm)
    back = read_label_png(tmp_path / "m.png")
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, lm)
    assert list(tmp_path.iterdir()) == [tmp_path / "m.png"]  # no temporary file left


def test_label_tiff_round_trip_uint8_and_uint16(tmp_path):
    lm = RNG.integers(0, 256, (6, 7)).astype(np.uint8)
    for dtype in ("uint8", "uint16"):
        write_label_tiff(tmp_path / f"{dtype}.tif", lm, dtype=dtype)
        back = tifffile.imread(tmp_path / f"{dtype}.tif")
        assert back.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(back, lm)


def test_bad_label_maps_are_rejected(tmp_path):
    with pytest.raises(LabelMapError, match="2-D"):
        as_label_map(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(LabelMapError, match="integer"):
        as_label_map(np.zeros((2, 2), np.float32))
    with pytest.raises(LabelMapError, match="0..255"):
        as_label_map(np.array([[0, 300]]))
    with pytest.raises(LabelMapError, match="0..255"):
        as_label_map(np.array([[-1, 3]]))
    Image.fromarray(_rgb()).save(tmp_path / "rgb.png")
    with pytest.raises(LabelMapError, match="not a label map"):
        read_label_png(tmp_path / "rgb.png")
