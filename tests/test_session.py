"""The project session: creation, keys, tags, statuses, proposals vs user masks, resume, atomicity, CSV tags."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from PIL import Image

from hhn.errors import UserError
from napari_wfss.classes import ClassTableError
from napari_wfss.images import ImageFolderError, LabelMapError
from napari_wfss.project_store import FORMAT_VERSION
from napari_wfss.session import (
    ACCEPTED,
    EDITED,
    PROPOSED,
    REJECTED,
    TAGGED,
    UNTAGGED,
    ProjectInUseError,
    Session,
    SessionError,
    UnknownImageError,
)

H, W = 12, 16


def make_images(folder, names, size=(H, W), seed=0):
    """Write small random RGB images under ``folder`` (sub-folders created); return ``folder``."""
    rng = np.random.default_rng(seed)
    for name in names:
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(p)
    return folder


def label_map(*ids, size=(H, W)):
    """A label map with horizontal bands of ``ids`` (0 = background, 255 = ignore allowed)."""
    lm = np.zeros(size, np.uint8)
    for band, i in enumerate(ids):
        lm[band * 2 : band * 2 + 2] = i
    return lm


@pytest.fixture
def session(tmp_path):
    make_images(tmp_path / "imgs", ["a.png", "b.png", "c.jpg", "d.png"])
    s = Session.create(tmp_path / "imgs")
    s.add_class("cow")
    s.add_class("sheep")
    return s


def _state(s):
    """Everything observable about a session, arrays included (for resume comparisons)."""
    out = {"classes": s.classes.to_records(), "images": s.images}
    for rel in s.images:
        info = s.info(rel)
        prop, mask = s.proposal(rel), s.mask(rel)
        out[rel] = (info, None if prop is None else prop.tolist(), None if mask is None else mask.tolist())
    return out


# ----------------------------------------------------------------------------------- create / open


def test_create_writes_versioned_project_and_refuses_a_second_create(tmp_path, session):
    data = json.loads((tmp_path / "imgs" / ".wfss" / "project.json").read_text())
    assert data["format"] == "napari-wfss-project" and data["version"] == FORMAT_VERSION
    assert [r["path"] for r in data["images"]] == ["a.png", "b.png", "c.jpg", "d.png"]
    assert data["image_folder"] == ".."
    assert [c["name"] for c in data["classes"]] == ["cow", "sheep"]
    with pytest.raises(SessionError, match="already exists"):
        Session.create(tmp_path / "imgs")
    assert session.counts() == {UNTAGGED: 4, TAGGED: 0, PROPOSED: 0, EDITED: 0, ACCEPTED: 0, REJECTED: 0}


def test_create_on_empty_or_missing_folder_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ImageFolderError, match="no images found"):
        Session.create(tmp_path / "empty")
    with pytest.raises(ImageFolderError, match="not found"):
        Session.create(tmp_path / "missing")
    with pytest.raises(SessionError, match="no project found"):
        Session.open(tmp_path / "empty")


def test_explicit_project_dir_and_open_or_create(tmp_path):
    make_images(tmp_path / "imgs", ["x.png"])
    s = Session.open_or_create(tmp_path / "imgs", tmp_path / "proj")
    s.tag("x.png", "cat", add_class=True)
    assert (tmp_path / "proj" / "project.json").is_file() and not (tmp_path / "imgs" / ".wfss").exists()
    s.close()
    again = Session.open_or_create(tmp_path / "imgs", tmp_path / "proj")
    assert again.tags_of("x.png") == ["cat"]


def test_open_accepts_the_image_folder_and_rejects_future_versions(tmp_path, session):
    assert Session.open(tmp_path / "imgs", read_only=True).project_dir == session.project_dir
    session.close()
    pj = session.project_dir / "project.json"
    data = json.loads(pj.read_text())
    data["version"] = FORMAT_VERSION + 1
    pj.write_text(json.dumps(data))
    with pytest.raises(SessionError, match="Upgrade napari-wfss"):
        Session.open(session.project_dir)
    pj.write_text("{ not json")
    with pytest.raises(SessionError, match="cannot read"):
        Session.open(session.project_dir)


CHILD_OPENS = "import sys\nfrom napari_wfss.session import Session\nSession.open(sys.argv[1])\nprint('opened')"


def test_one_writer_per_project(session):
    with pytest.raises(ProjectInUseError, match="open in another napari-wfss window, process or session"):
        Session.open(session.project_dir)  # a second session in this process
    child = subprocess.run([sys.executable, "-c", CHILD_OPENS, str(session.project_dir)],
                           capture_output=True, text=True)
    assert child.returncode != 0 and "ProjectInUseError" in child.stderr  # and in another process
    viewer = Session.open(session.project_dir, read_only=True)  # reading needs no lock
    assert not viewer.writable and viewer.classes.names == ["cow", "sheep"]
    with pytest.raises(SessionError, match="read-only or closed"):
        viewer.set_proposal("b.png", label_map(1), model="m")
    assert not (session.project_dir / "proposals" / "b.png").exists()
    session.close()
    session.close()  # idempotent
    with pytest.raises(SessionError, match="read-only or closed"):
        session.tag("a.png", "cow")
    child = subprocess.run([sys.executable, "-c", CHILD_OPENS, str(session.project_dir)],
                           capture_output=True, text=True)
    assert child.stdout.strip() == "opened", child.stderr  # released by close(), and by the child's exit
    with Session.open(session.project_dir) as again:
        again.tag("a.png", "cow")
    assert Session.open(session.project_dir, read_only=True).tags_of("a.png") == ["cow"]


def test_a_file_system_without_locks_still_opens_with_a_warning(session, monkeypatch):
    import filelock

    session.close()

    def unsupported(self, *args, **kwargs):
        raise NotImplementedError("FileSystem does not appear to support flock")  # as filelock says on such shares

    monkeypatch.setattr(filelock.FileLock, "acquire", unsupported)
    s = Session.open(session.project_dir)
    assert s.writable and any("cannot lock files" in w for w in s.warnings)
    s.tag("a.png", "cow")  # writes as before
    s.close()
    assert Session.open(session.project_dir, read_only=True).tags_of("a.png") == ["cow"]


def test_keys_are_unique_for_duplicate_stems_and_stable(tmp_path):
    names = ["a.png", "a.jpg", "sub/a.png", "sub__a.png", "A.bmp", "deep/x/y z.png"]
    make_images(tmp_path / "imgs", names)
    s = Session.create(tmp_path / "imgs", recursive=True)
    keys = {rel: s.key(rel) for rel in s.images}
    assert sorted(keys) == sorted(names)
    assert len({k.casefold() for k in keys.values()}) == len(names)  # unique even on case-insensitive disks
    assert keys["sub/a.png"] == "sub__a" and keys["deep/x/y z.png"] == "deep__x__y z"
    for k in keys.values():
        assert "/" not in k and not k.startswith(".")
    make_images(tmp_path / "imgs", ["a.tif"])  # a newcomer never takes over an existing key
    again = Session.open(tmp_path / "imgs", read_only=True)
    assert {rel: again.key(rel) for rel in names} == keys
    assert again.key("a.tif") not in {k.casefold() for k in keys.values()}


def test_project_folder_is_not_scanned_as_images(tmp_path):
    make_images(tmp_path / "imgs", ["a.png"])
    s = Session.create(tmp_path / "imgs", tmp_path / "imgs" / "project", recursive=True)
    s.add_class("cow")
    s.set_proposal("a.png", label_map(1), model="m")
    s.rescan()
    assert s.images == ["a.png"]


# ------------------------------------------------------------------------------------------- tags


def test_tags_and_status(session):
    assert session.status("a.png") == UNTAGGED
    assert session.tag("a.png", "COW") is True
    assert session.tag("a.png", "cow") is False
    session.tag("a.png", "sheep")
    assert session.tags_of("a.png") == ["cow", "sheep"] and session.status("a.png") == TAGGED
    assert session.images_tagged() == ["a.png"] and session.images_tagged("sheep") == ["a.png"]
    assert session.untag("a.png", "cow") is True and session.untag("a.png", "cow") is False
    session.untag("a.png", "sheep")
    assert session.status("a.png") == UNTAGGED
    with pytest.raises(ClassTableError, match="unknown class 'horse'"):
        session.tag("a.png", "horse")
    session.tag("a.png", "horse", add_class=True)
    assert "horse" in session.classes
    session.set_tags("b.png", ["sheep", "horse"])
    assert session.tags_of("b.png") == ["sheep", "horse"]  # class-table order
    with pytest.raises(UnknownImageError, match="not an image of this session") as info:
        session.tag("zzz.png", "cow")
    assert isinstance(info.value, UserError)


def test_image_names_absolute_and_relative(session):
    absolute = session.image_folder / "a.png"
    session.tag(absolute, "cow")
    assert session.tags_of("a.png") == ["cow"] and session.image_path("./a.png") == absolute
    assert "a.png" in session and "nope.png" not in session and 3 not in session


def test_rename_and_remove_class(session):
    session.tag("a.png", "cow")
    session.set_proposal("b.png", label_map(1, 2), model="m")
    session.accept("c.jpg", label_map(2))
    session.rename_class("cow", "cattle")
    assert session.tags_of("a.png") == ["cattle"]
    assert session.info("b.png").classes_present == ("cattle", "sheep")
    with pytest.raises(SessionError, match=r"painted in 1 user mask\(s\) \(c.jpg\)"):
        session.remove_class("sheep")
    session.remove_class("cattle")  # only a proposal contains it: the proposal is dropped
    assert session.tags_of("a.png") == [] and session.proposal("b.png") is None
    assert session.status("b.png") == UNTAGGED
    assert not (session.project_dir / "proposals" / "b.png").exists()
    assert Session.open(session.project_dir, read_only=True).classes.names == ["sheep"]


# -------------------------------------------------------------------------- proposals and masks


def test_proposal_accept_edit_reject_cycle(session):
    lm = label_map(1, 2, 0, 255)
    assert session.set_proposal("a.png", lm, model="hhn-lite0", scores={"cow": 0.9}) is True
    assert session.status("a.png") == PROPOSED
    np.testing.assert_array_equal(session.proposal("a.png"), lm)
    info = session.info("a.png")
    assert info.proposal_model == "hhn-lite0" and info.proposal_scores == {"cow": 0.9}
    assert info.classes_present == ("cow", "sheep") and info.proposal_time
    assert session.mask("a.png") is None
    session.accept("a.png")  # accepting without an array takes the proposal
    assert session.status("a.png") == ACCEPTED
    np.testing.assert_array_equal(session.mask("a.png"), lm)
    edited = label_map(2)
    session.mark_edited("a.png", edited)  # editing an accepted mask needs a new accept
    assert session.status("a.png") == EDITED
    np.testing.assert_array_equal(session.current_label_map("a.png"), edited)
    np.testing.assert_array_equal(session.proposal("a.png"), lm)  # proposal kept apart
    session.accept("a.png")
    np.testing.assert_array_equal(session.mask("a.png"), edited)
    with pytest.raises(SessionError, match="nothing to accept"):
        session.accept("b.png")
    session.set_proposal("b.png", lm, model="m")
    session.reject("b.png")
    assert session.status("b.png") == REJECTED and session.proposal("b.png") is None
    assert not (session.project_dir / "proposals" / "b.png").exists()
    assert session.set_proposal("b.png", lm, model="m2") is True  # a rejected image may be proposed again
    assert session.status("b.png") == PROPOSED


def test_a_proposal_never_overwrites_user_masks(session):
    mine = label_map(1)
    session.accept("a.png", mine)
    session.mark_edited("b.png", mine)
    mask_files = {r: (session.project_dir / "masks" / f"{session.key(r)}.png").read_bytes() for r in ("a.png", "b.png")}
    for rel in ("a.png", "b.png"):
        assert session.set_proposal(rel, label_map(2, 2, 2), model="m") is False
        assert session.proposal(rel) is None
        np.testing.assert_array_equal(session.mask(rel), mine)
        assert (session.project_dir / "masks" / f"{session.key(rel)}.png").read_bytes() == mask_files[rel]
    assert session.status("a.png") == ACCEPTED and session.status("b.png") == EDITED
    assert not (session.project_dir / "proposals").exists() or not any((session.project_dir / "proposals").iterdir())


def test_reject_protects_accepted_masks(session):
    session.accept("a.png", label_map(1))
    with pytest.raises(SessionError, match="is accepted"):
        session.reject("a.png")
    assert session.status("a.png") == ACCEPTED
    session.reject("a.png", force=True)
    assert session.status("a.png") == REJECTED and session.mask("a.png") is None
    assert not (session.project_dir / "masks" / "a.png").exists()


def test_label_maps_are_validated(session):
    with pytest.raises(LabelMapError, match=r"shape \(3, 3\).*\(12, 16\)"):
        session.set_proposal("a.png", np.zeros((3, 3), np.uint8), model="m")
    with pytest.raises(LabelMapError, match=r"id\(s\) \[7\] that are not classes"):
        session.accept("a.png", label_map(1, 7))
    assert session.status("a.png") == UNTAGGED
    session.accept("a.png", label_map(1, 255).astype(np.int32))  # napari Labels data is int32
    assert session.mask("a.png").dtype == np.uint8


def test_masks_are_palette_pngs_with_class_colours(session):
    session.set_class_color("sheep", "#123456")
    session.accept("a.png", label_map(1, 2, 255))
    with Image.open(session.project_dir / "masks" / "a.png") as im:
        assert im.mode == "P"
        pal = im.getpalette()
        np.testing.assert_array_equal(np.array(im), label_map(1, 2, 255))
    assert tuple(pal[6:9]) == (0x12, 0x34, 0x56)
    assert tuple(pal[3:6]) == session.classes.get("cow").color


def test_deferred_save_writes_once_and_accept_always_saves(session):
    pj = session.project_dir / "project.json"
    before = pj.read_bytes()
    with session.deferred_save():
        session.tag("a.png", "cow")
        session.tag("b.png", "sheep")
        assert pj.read_bytes() == before
    assert Session.open(session.project_dir, read_only=True).tags_of("b.png") == ["sheep"]
    session.autosave = False
    session.tag("c.jpg", "cow")
    session.accept("d.png", label_map(1))  # saved although autosave is off
    reopened = Session.open(session.project_dir, read_only=True)
    assert reopened.status("d.png") == ACCEPTED and reopened.tags_of("c.jpg") == ["cow"]


# ------------------------------------------------------------------------------------------ resume


def test_reopen_restores_everything(session):
    session.tag("a.png", "cow")
    session.set_proposal("b.png", label_map(1, 2), model="m", scores={"cow": 0.5})
    session.accept("c.jpg", label_map(2, 0, 1))
    session.mark_edited("d.png", label_map(255, 1))
    session.set_class_color("cow", "#ff00ff")
    before = _state(session)
    reopened = Session.open(session.project_dir, read_only=True)
    assert _state(reopened) == before
    assert reopened.warnings == []


def test_moved_project_and_new_or_missing_images(tmp_path, session):
    session.accept("a.png", label_map(1))
    session.close()
    shutil.move(tmp_path / "imgs", tmp_path / "moved")  # project inside the folder: moves along
    s = Session.open(tmp_path / "moved", read_only=True)
    assert s.status("a.png") == ACCEPTED and s.image_folder == (tmp_path / "moved").resolve()
    os.rename(tmp_path / "moved" / "a.png", tmp_path / "a.png")
    make_images(tmp_path / "moved", ["e.png"])
    s = Session.open(tmp_path / "moved", read_only=True)
    assert s.images == ["b.png", "c.jpg", "d.png", "e.png"] and s.status("e.png") == UNTAGGED
    os.rename(tmp_path / "a.png", tmp_path / "moved" / "a.png")  # it comes back with its mask
    s = Session.open(tmp_path / "moved", read_only=True)
    assert s.status("a.png") == ACCEPTED and "a.png" in s.images


def test_open_repairs_references_to_deleted_files(session):
    session.set_proposal("a.png", label_map(1), model="m")
    session.accept("b.png", label_map(2))
    (session.project_dir / "proposals" / "a.png").unlink()
    (session.project_dir / "masks" / "b.png").unlink()
    session.close()
    s = Session.open(session.project_dir)
    assert s.status("a.png") == UNTAGGED and s.status("b.png") == UNTAGGED
    assert len(s.warnings) == 2 and "missing" in s.warnings[0]
    assert Session.open(session.project_dir, read_only=True).warnings == []  # the repair was saved


def test_image_folder_override_after_moving_images_only(tmp_path, session):
    project = tmp_path / "proj"
    s = Session.create(tmp_path / "imgs", project)
    s.tag("a.png", "x", add_class=True)
    s.close()
    shutil.move(tmp_path / "imgs", tmp_path / "elsewhere")
    with pytest.raises(SessionError, match="image folder of project .* not found"):
        Session.open(project)
    assert Session.open(project, image_folder=tmp_path / "elsewhere").tags_of("a.png") == ["x"]


# -------------------------------------------------------------------------------------- atomicity


def test_failed_rename_leaves_the_old_state(session, monkeypatch):
    session.set_proposal("a.png", label_map(1), model="m")
    pj_before = (session.project_dir / "project.json").read_bytes()
    prop_before = (session.project_dir / "proposals" / "a.png").read_bytes()
    real_replace = os.replace

    def boom(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        session.accept("a.png", label_map(2))  # fails writing the mask PNG
    with pytest.raises(OSError, match="simulated"):
        session.set_proposal("b.png", label_map(2), model="m")
    calls = []

    def fail_second(src, dst):  # the PNG lands, project.json does not
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("killed between the two writes (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_second)
    with pytest.raises(OSError, match="simulated"):
        session.accept("a.png", label_map(2))
    monkeypatch.setattr(os, "replace", real_replace)
    assert (session.project_dir / "project.json").read_bytes() == pj_before
    assert (session.project_dir / "proposals" / "a.png").read_bytes() == prop_before
    leftovers = [p for p in session.project_dir.rglob("*") if p.name.endswith(".wfss-tmp")]
    assert leftovers == []
    session.close()
    s = Session.open(session.project_dir)
    assert s.status("a.png") == PROPOSED and s.mask("a.png") is None  # the orphan mask is not trusted
    assert s.status("b.png") == UNTAGGED
    s.accept("a.png", label_map(2))
    np.testing.assert_array_equal(Session.open(session.project_dir, read_only=True).mask("a.png"), label_map(2))


def test_failed_fsync_mid_write_keeps_project_json(session, monkeypatch):
    session.tag("a.png", "cow")
    before = (session.project_dir / "project.json").read_bytes()

    def boom(fd):
        raise OSError("I/O error (simulated)")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="simulated"):
        session.tag("b.png", "cow")
    monkeypatch.undo()
    assert (session.project_dir / "project.json").read_bytes() == before
    assert not list(session.project_dir.glob("*.wfss-tmp"))


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from napari_wfss.session import Session
    s = Session.open(sys.argv[1])
    ids = [0, 255, *s.classes.ids]
    rng = np.random.default_rng(int(sys.argv[2]))
    print("ready", flush=True)
    i = 0
    while True:
        for rel in s.images:
            lm = rng.choice(ids, size=(120, 160)).astype(np.uint8)
            [lambda: s.set_proposal(rel, lm, model="m"), lambda: s.mark_edited(rel, lm),
             lambda: s.accept(rel, lm), lambda: s.tag(rel, "cow")][i % 4]()
            i += 1
""")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL semantics")
def test_kill_at_random_moments_never_corrupts_the_project(tmp_path):
    make_images(tmp_path / "imgs", [f"{i}.png" for i in range(5)], size=(120, 160))
    s = Session.create(tmp_path / "imgs")
    s.add_class("cow")
    s.add_class("sheep")
    s.close()  # the child writes
    rng = np.random.default_rng(1)
    for round_ in range(3):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(s.project_dir), str(round_)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.2 + 0.4 * rng.random())
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        with Session.open(s.project_dir) as reopened:  # the killed child's lock was released
            assert reopened.warnings == []  # every referenced file exists
            for rel in reopened.images:
                for arr in (reopened.proposal(rel), reopened.mask(rel)):
                    assert arr is None or (arr.shape == (120, 160) and set(np.unique(arr)) <= {0, 1, 2, 255})
    assert any(Session.open(s.project_dir, read_only=True).status(r) != UNTAGGED for r in s.images)


def test_concurrent_threads_share_one_session(session):
    errors = []

    def work(rel, cid):
        try:
            for _ in range(5):
                session.tag(rel, "cow")
                session.set_proposal(rel, label_map(cid), model=f"t{cid}")
                session.untag(rel, "cow")
                session.tag(rel, "sheep")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(rel, 1 + i % 2)) for i, rel in enumerate(session.images)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    reopened = Session.open(session.project_dir, read_only=True)
    for i, rel in enumerate(session.images):
        assert reopened.tags_of(rel) == ["sheep"] and reopened.status(rel) == PROPOSED
        np.testing.assert_array_equal(reopened.proposal(rel), label_map(1 + i % 2))


# ------------------------------------------------------------------------------------------ tags CSV


def test_import_tags_csv(tmp_path):
    make_images(tmp_path / "imgs", ["img1.png", "sub/img2.png", "sub/dup.png", "other/dup.png", "X.jpg"])
    s = Session.create(tmp_path / "imgs", recursive=True)
    s.add_class("cow")
    csv_path = tmp_path / "tags.csv"
    csv_path.write_text(textwrap.dedent("""\
        image,class
        # comment
        img1.png,cow
        img1.png,Sheep
        sub/img2.png, cow
        img2,grass
        .\\sub\\img2.png,sheep
        x.JPG,cow
        dup.png,cow
        ghost.png,cow
        img1.png,background
        img1.png
        img1.png,cow
        """))
    report = s.import_tags_csv(csv_path)
    assert s.tags_of("img1.png") == ["cow", "Sheep"]
    assert s.tags_of("sub/img2.png") == ["cow", "Sheep", "grass"]
    assert s.tags_of("X.jpg") == ["cow"]
    assert report.new_classes == ["Sheep", "grass"]
    assert report.tags_added == 6 and report.images_tagged == ["img1.png", "sub/img2.png", "X.jpg"]
    assert report.unknown_images == [(10, "ghost.png")]
    assert report.ambiguous_images == [(9, "dup.png", ["other/dup.png", "sub/dup.png"])]
    assert [line for line, _ in report.bad_rows] == [11, 12]
    assert not report.ok and len(report.problems) == 4
    assert "ghost.png" in report.summary() and "tags.csv:10" in report.summary()
    assert Session.open(s.project_dir, read_only=True).tags_of("sub/img2.png") == ["cow", "Sheep", "grass"]


def test_tags_csv_round_trip(tmp_path, session):
    session.tag("a.png", "cow")
    session.tag("a.png", "sheep")
    session.tag("d.png", "sheep")
    session.export_tags_csv(tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_text().splitlines() == ["image,class", "a.png,cow", "a.png,sheep", "d.png,sheep"]
    other = Session.create(tmp_path / "imgs", tmp_path / "proj2")
    report = other.import_tags_csv(tmp_path / "out.csv")
    assert report.ok and other.tags_of("a.png") == ["cow", "sheep"] and other.tags_of("d.png") == ["sheep"]


def test_classes_csv_through_the_session(tmp_path, session):
    session.export_classes_csv(tmp_path / "classes.csv")
    (tmp_path / "more.csv").write_text("id,name,color\n2,sheep,#000000\n9,goat,\n")
    added = session.import_classes_csv(tmp_path / "more.csv")
    assert [c.name for c in added] == ["goat"]
    s = Session.open(session.project_dir, read_only=True)
    assert s.classes.get("goat").id == 9 and s.classes.get("sheep").color == (0, 0, 0)
    (tmp_path / "bad.csv").write_text("id,name\n5,cow\n")
    with pytest.raises(ClassTableError, match="ids of existing classes cannot change"):
        session.import_classes_csv(tmp_path / "bad.csv")
