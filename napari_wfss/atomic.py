"""Atomic file writes: a kill at any moment leaves either the old file or the new one, never half of one.

Every writer of the project folder and of the export folder goes through this module. The recipe:
write to a temporary file in the destination's folder (same file system, so the rename is atomic),
flush and ``fsync`` it, ``os.replace`` it over the destination, then ``fsync`` the folder so the rename
itself survives a power cut (best effort: not every platform can open a folder). If anything fails
before the rename, the temporary file is removed and the destination is untouched.

Files are created with mode ``0o666`` less the process's umask, as ``open`` creates them (``0o644``
under the usual umask ``022``), so an exported dataset is readable by whoever may read its folder.

Temporary files are named ``.<name>.<random>.wfss-tmp``; a process killed between creating one and
renaming it leaves it behind, and :func:`remove_stale_temps` clears such leftovers.

Paths read from files (an image key in project.json, a file named by an export record) choose where a
writer writes or deletes; :func:`subfolders_leading_out` finds the folders among them that a symbolic
link turns into a place outside their parent folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".wfss-tmp"


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable; silently skipped where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_temp(dest: Path) -> Path:
    """Create a new empty temporary file beside ``dest`` (mode ``0o666`` less the umask) and return its path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = dest.parent / f".{dest.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
        try:
            os.close(os.open(tmp, flags, 0o666))  # unlike tempfile.mkstemp (always 0o600), honours the umask
        except FileExistsError:
            continue  # 48 random bits taken: draw again
        return tmp


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on a clean exit it atomically replaces ``path``.

    ``mode`` is ``"wb"`` or ``"w"`` (text, ``encoding`` defaults to UTF-8). The parent folder is created
    if needed. If the ``with`` body raises, or the flush, fsync or rename fails, the temporary file is
    deleted, ``path`` keeps its previous content, and the exception propagates.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports modes 'wb' and 'w', not {mode!r}")
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(dest)  # reopened by name below: some writers (tifffile) need ``fh.name`` to be a path
    try:
        kwargs: dict[str, Any] = {"encoding": encoding or "utf-8", "newline": ""} if mode == "w" else {}
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(dest.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically replace ``path`` with ``text`` encoded as UTF-8 (newlines written as given)."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically replace ``path`` with ``obj`` as indented, key-ordered-as-given UTF-8 JSON."""
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Atomically replace ``dst`` with a byte copy of ``src``."""
    with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, length=1 << 20)


def atomic_link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> bool:
    """Atomically make ``dst`` a hard link to ``src``; copy instead where linking is impossible.

    Returns ``True`` if a hard link was made, ``False`` if the file was copied (other file system,
    or a file system without hard links).
    """
    dest = Path(dst)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.link{TEMP_SUFFIX}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        atomic_copy(src, dst)
        return False
    try:
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(dest.parent)
    return True


def remove_stale_temps(folder: str | os.PathLike[str], older_than: float = 600.0) -> list[Path]:
    """Delete temporary files left in ``folder`` (not recursive) by a killed writer; return their paths.

    Only files last modified more than ``older_than`` seconds ago are removed, so a writer still
    running in another process keeps its temporary file.
    """
    removed = []
    now = time.time()
    for p in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime >= older_than:
                p.unlink()
                removed.append(p)
    return removed


def subfolders_leading_out(folder: str | os.PathLike[str], names: Iterable[str]) -> list[Path]:
    """The existing sub-folders ``folder / name`` that are not where they seem: a symbolic link (on the
    sub-folder itself) leads elsewhere, so files written into them would land outside ``folder``."""
    root = Path(folder).resolve()
    return [root / name for name in names
            if os.path.lexists(root / name) and (root / name).resolve() != root / name]
