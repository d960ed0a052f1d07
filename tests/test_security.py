"""Issue 23: a crafted or damaged project or export folder, file modes, lost projects, messages, limits.

Each test stands for one finding of the issue: keys, image paths and export records that lead outside
their folders; files written as 0600 whatever the umask; no backup of project.json, and a rerun after
losing the project overwriting accepted masks in the export; tracebacks (``--out`` a file, a full disk,
``image_size: "abc"``); a huge JPEG decoded whole; non-image files skipped silently; thousands of error
lines; temporary files surviving a reopen.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from test_batch import TAGS, fake_engine, make_folder

from hhn.errors import UserError
from napari_wfss.batch import PROJECT_DIRNAME, BatchError, label_folder
from napari_wfss.cli import build_parser, main
from napari_wfss.export import export_session
from napari_wfss.images import ImageFolderError, read_label_png
from napari_wfss.session import Session, SessionError


def _session(tmp_path, names=("a.png", "b.png")) -> Session:
    """A project in ``tmp_path/imgs/.wfss`` with class 'cat', and a proposal for every image."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, name in enumerate(names):
        Image.fromarray(np.full((8, 10, 3), 40 * i, np.uint8)).save(folder / name)
    session = Session.create(folder)
    session.add_class("cat")
    for name in names:
        session.set_proposal(name, np.ones((8, 10), np.uint8), model="m")
    return session


def _edit_records(project_json, change) -> None:
    data = json.loads(project_json.read_text())
    for rec in data["images"]:
        change(rec)
    project_json.write_text(json.dumps(data))


# ------------------------------------------------------------------------ keys, paths, export records


@pytest.mark.parametrize("field, value", [
    ("key", "../../../evil"),
    ("key", "ABSOLUTE"),
    ("key", ".."),
    ("key", "sub\\..\\..\\evil"),
    ("path", "../../outside.png"),
    ("path", "ABSOLUTE"),
])
def test_a_crafted_project_json_cannot_lead_wfss_label_outside_out(tmp_path, field, value):
    folder, tags = make_folder(tmp_path / "in", n_untagged=2)
    out = tmp_path / "a" / "b" / "out"
    label_folder(folder, tags, out, fake_engine(), progress=False)
    if value == "ABSOLUTE":
        value = str(tmp_path / "abs" / "evil.png")

    def craft(rec):
        if rec["path"] == "u00.png":
            rec[field] = value
            rec["proposal"] = None  # so that the rerun labels it again

    _edit_records(out / PROJECT_DIRNAME / "project.json", craft)
    before = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    with pytest.raises(SessionError, match=r"unsafe image record .*project.json"):
        label_folder(folder, tags, out, fake_engine(), progress=False)
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == before  # nothing written anywhere


def test_two_images_sharing_a_key_are_refused(tmp_path):
    session = _session(tmp_path)
    session.close()
    _edit_records(session.project_dir / "project.json", lambda rec: rec.update(key="a"))
    with pytest.raises(SessionError, match="share the key 'a'"):
        Session.open(session.project_dir)


@pytest.mark.parametrize("case", ["parent", "absolute", "key"])
def test_export_records_cannot_make_export_delete_outside_files(tmp_path, case):
    session = _session(tmp_path)
    out = tmp_path / "out"
    export_session(session, out)
    victim = tmp_path / "victim.json"
    victim.write_text("keep me")
    files = {"mask": "", "image": "", "tiff": ""}
    key = "zz"
    if case == "parent":
        files["mask"] = "../victim.json"
    elif case == "absolute":
        files["mask"] = str(victim)
    else:  # the record's own file is named by its key: ../../victim.json
        key = "../../victim"
    record = {"version": 1, "key": key, "meta": {"source": "zz.png"}, "files": files}
    (out / ".wfss-export" / "zz.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"outside the export's layout .*zz.json"):
        export_session(session, out)  # zz is not a session image: the export would remove its files
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize("where", ["export", "project"])
def test_a_label_folder_linked_elsewhere_is_refused(tmp_path, where):
    session = _session(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if where == "export":
        out = tmp_path / "out"
        out.mkdir()
        (out / "masks").symlink_to(elsewhere)
        with pytest.raises(UserError, match="link"):
            export_session(session, out)
    else:
        session.close()
        shutil.rmtree(session.project_dir / "masks", ignore_errors=True)
        (session.project_dir / "masks").symlink_to(elsewhere)
        with pytest.raises(SessionError, match="link"):
            Session.open(session.project_dir).accept("a.png")
    assert list(elsewhere.iterdir()) == []


# ------------------------------------------------------------------------------------------ file modes


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        session = _session(tmp_path)
        session.accept("a.png")
        export_session(session, tmp_path / "out", tiff=True)
        session.export_tags_csv(tmp_path / "tags.csv")
    finally:
        os.umask(old)
    written = [p for p in [*(tmp_path / "out").rglob("*"), *session.project_dir.rglob("*"), tmp_path / "tags.csv"]
               if p.is_file() and not p.name.endswith(".lock")]
    assert len(written) > 10
    assert {p.relative_to(tmp_path).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {
        p.relative_to(tmp_path).as_posix(): oct(mode) for p in written}


# -------------------------------------------------------------------------- backup, lost project


def test_project_json_keeps_its_previous_version_and_the_error_names_it(tmp_path):
    session = _session(tmp_path)
    project = session.project_dir
    previous = (project / "project.json").read_text()
    session.accept("a.png")
    session.close()
    backup = project / "project.json.bak"
    assert backup.read_text() == previous
    (project / "project.json").write_text((project / "project.json").read_text()[:100])  # truncated
    with pytest.raises(SessionError, match=r"cannot read the project file.*project.json; .*project.json.bak: copy"):
        Session.open(project)
    shutil.copyfile(backup, project / "project.json")
    with Session.open(project) as restored:  # as it was one save earlier
        assert restored.images == ["a.png", "b.png"] and restored.status("a.png") == "proposed"


@pytest.mark.parametrize("lost", ["project.json", "project folder"])
def test_rerun_after_losing_the_project_keeps_accepted_masks_in_the_export(tmp_path, lost):
    folder, tags = make_folder(tmp_path, n_untagged=2)
    out = tmp_path / "out"
    label_folder(folder, tags, out, fake_engine(), progress=False)
    with Session.open(out / PROJECT_DIRNAME) as session:
        session.accept("u00.png", np.full(session.proposal("u00.png").shape, 2, np.uint8))  # painted: dog
    label_folder(folder, tags, out, fake_engine(), progress=False)  # exports the accepted mask
    exported = (out / "masks" / "u00.png").read_bytes()
    assert (read_label_png(out / "masks" / "u00.png") == 2).all()
    if lost == "project.json":
        (out / PROJECT_DIRNAME / "project.json").unlink()
    else:
        shutil.rmtree(out / PROJECT_DIRNAME)
    hint = "project.json.bak: copy" if lost == "project.json" else "there is no backup"
    with pytest.raises(BatchError, match=rf"project file missing .*overwrite the exported masks.*{hint}"):
        label_folder(folder, tags, out, fake_engine(), progress=False)
    assert (out / "masks" / "u00.png").read_bytes() == exported


def test_a_new_project_is_refused_where_a_lost_one_left_its_masks(tmp_path):
    session = _session(tmp_path)
    session.accept("a.png", np.zeros((8, 10), np.uint8))
    mask = (session.project_dir / "masks" / "a.png").read_bytes()
    session.close()
    (session.project_dir / "project.json").unlink()
    with pytest.raises(SessionError, match=r"project.json is missing .*project.json.bak.*masks.*copy that file"):
        Session.open_or_create(tmp_path / "imgs")
    assert (session.project_dir / "masks" / "a.png").read_bytes() == mask


# ----------------------------------------------------------------------- tracebacks become messages


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("wfss label: error: ")
    return last


def test_out_naming_an_existing_file_is_a_message(tmp_path, capsys):
    folder, tags = make_folder(tmp_path, n_untagged=1)
    (tmp_path / "out.txt").write_text("a file")
    assert main(["label", str(folder), "--tags", str(tags), "--out", str(tmp_path / "out.txt")]) == 2
    assert "--out is a file, not a folder" in _one_line_error(capsys)


def test_a_full_disk_is_a_message_and_the_rerun_resumes(tmp_path, capsys, monkeypatch):
    import napari_wfss.batch as batch

    folder, tags = make_folder(tmp_path, n_untagged=6)
    argv = ["label", str(folder), "--tags", str(tags), "--out", str(tmp_path / "out"), "--batch-size", "1"]
    monkeypatch.setattr(batch.Engine, "from_options", lambda options: fake_engine(batch_size=1))
    fsync, calls = os.fsync, []

    def fsync_until_full(fd):
        calls.append(fd)
        if len(calls) > 12:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_until_full)
    assert main(argv) == 2
    assert "disk full (No space left on device) while writing" in _one_line_error(capsys)
    monkeypatch.setattr(os, "fsync", fsync)
    assert main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == [f"u{i:02d}.png" for i in range(6)]


def test_image_size_abc_in_model_json_is_a_message(tmp_path, capsys):
    from hhn.model_names import declared_config

    folder, tags = make_folder(tmp_path, n_untagged=1)
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"format": "napari-wfss-checkpoint", "format_version": 1,
                                 "config": {"name": "m", "backbone": "efficientnet_lite0", "image_size": "abc"},
                                 "backbone_weights": {"source": "checkpoint"}}))
    with pytest.raises(UserError, match=r"image_size 'abc' must be two multiples of 16"):
        declared_config(model)  # what the widget reads to show the model's threshold
    assert main(["label", str(folder), "--tags", str(tags), "--out", str(tmp_path / "out"), "--model", str(model)]) == 2
    assert "image_size 'abc' must be two multiples of 16" in _one_line_error(capsys)


# ----------------------------------------------------------------------------------- huge images

_MAKE_HUGE_JPEG = "import sys; from PIL import Image; Image.new('L', (12000, 12000), 128).save(sys.argv[1], quality=50)"
_READ_AND_MEASURE = textwrap.dedent("""
    import re, sys
    from hhn.errors import UserError
    from napari_wfss.images import read_image
    try:
        read_image(sys.argv[1])
        print("read")
    except UserError as exc:
        print(exc)
    status = open("/proc/self/status").read()  # VmHWM: this process's peak resident memory (ru_maxrss keeps
    print(int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) // 1024)  # the parent's across fork + exec)
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="peak memory read from /proc (Linux)")
def test_a_12000_px_jpeg_is_refused_before_it_is_decoded(tmp_path):
    huge = tmp_path / "huge.jpg"
    subprocess.run([sys.executable, "-c", _MAKE_HUGE_JPEG, str(huge)], check=True, timeout=120)
    done = subprocess.run([sys.executable, "-c", _READ_AND_MEASURE, str(huge)], capture_output=True, text=True,
                          check=True, timeout=120, cwd=tmp_path)  # cwd: imports come from sys.path, not ./
    message, peak_mb = done.stdout.strip().splitlines()
    assert message.startswith("image too large (12000 x 12000 = 144.0 megapixels, the limit is 64)")
    assert "--max-megapixels" in message
    assert int(peak_mb) < 300  # decoding alone would hold 144 MB of grey pixels and 432 MB of RGB


def test_wfss_label_reports_an_image_over_the_limit_and_labels_the_rest(tmp_path, capsys):
    folder, tags = make_folder(tmp_path, n_untagged=2)
    Image.new("RGB", (100, 100), (200, 10, 10)).save(folder / "u_big.png")
    summary = label_folder(folder, tags, tmp_path / "out", fake_engine(), progress=False, max_pixels=5000)
    assert summary.labelled == ["u00.png", "u01.png"]
    assert [image for image, _ in summary.failed] == ["u_big.png"]
    assert "image too large (100 x 100" in summary.failed[0][1] and "--max-megapixels" in summary.failed[0][1]
    args = build_parser().parse_args(["label", "f", "--tags", "t", "--out", "o", "--max-megapixels", "0.5"])
    assert args.max_megapixels == 0.5
    argv = ["label", str(folder), "--tags", str(tags), "--out", str(tmp_path / "o2"), "--max-megapixels", "nan"]
    assert main(argv) == 2
    assert "--max-megapixels must be a number above 0, got nan" in _one_line_error(capsys)
    session = Session.open(tmp_path / "out" / PROJECT_DIRNAME, read_only=True)
    assert session.read_image("u_big.png").shape == (100, 100, 3)  # under the default limit
    session.max_pixels = 5000
    with pytest.raises(UserError, match=r"image too large .*u_big.png"):
        session.read_image("u_big.png")


# ------------------------------------------------------------------------- skipped files, long lists


def test_files_that_are_not_images_are_counted_and_listed(tmp_path):
    folder, tags = make_folder(tmp_path, n_untagged=1)
    Image.new("RGB", (8, 8)).save(folder / "anim.gif")
    (folder / "notes.txt").write_text("not an image")
    summary = label_folder(folder, tags, tmp_path / "out", fake_engine(), progress=False)
    assert summary.skipped_files == ["anim.gif", "notes.txt"]
    assert "skipped 2 file(s) that are not images (.png .jpg" in summary.text()
    assert "anim.gif, notes.txt" in summary.text()
    only_gifs = tmp_path / "gifs"
    only_gifs.mkdir()
    Image.new("RGB", (8, 8)).save(only_gifs / "a.gif")
    with pytest.raises(ImageFolderError, match=r"no images in .*1 file\(s\) are of other types: a.gif"):
        label_folder(only_gifs, tags, tmp_path / "out2", fake_engine(), progress=False)


def test_ten_thousand_bad_tag_rows_give_a_short_message(tmp_path):
    folder, tags = make_folder(tmp_path, n_untagged=1)
    tags.write_text(TAGS + "".join(f"ghost{i}.png,cat\n" for i in range(10_000)))
    with pytest.raises(BatchError) as error:
        label_folder(folder, tags, tmp_path / "out", fake_engine(), progress=False)
    lines = str(error.value).splitlines()
    assert lines[0].startswith("10000 row(s) of ") and len(lines) == 22
    assert lines[-1].strip() == "... and 9980 more"


def test_the_summary_caps_failed_images(tmp_path):
    folder, tags = make_folder(tmp_path, n_untagged=30)
    for i in range(30):
        (folder / f"u{i:02d}.png").write_bytes(b"garbage")
    summary = label_folder(folder, tags, tmp_path / "out", fake_engine(), progress=False)
    text = summary.text()
    assert len(summary.failed) == 30 and text.count("\nfailed: ") == 20 and "... and 10 more" in text


# ----------------------------------------------------------------------------------------- temp files


def test_reopening_removes_the_temporary_files_a_killed_session_left(tmp_path):
    session = _session(tmp_path)
    session.close()
    left = [session.project_dir / ".project.json.x1.wfss-tmp", session.project_dir / "proposals" / ".a.png.x2.wfss-tmp"]
    for p in left:
        p.write_bytes(b"half a file")  # just written: a killed writer, not one still running (the lock says so)
    with Session.open(session.project_dir):
        assert not any(p.exists() for p in left)
    read_only_left = session.project_dir / ".project.json.x3.wfss-tmp"
    read_only_left.write_bytes(b"half a file")
    Session.open(session.project_dir, read_only=True)  # holds no lock: must not delete a writer's file
    assert read_only_left.exists()
