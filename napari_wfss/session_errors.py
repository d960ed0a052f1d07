"""Errors of the annotation session, shared by :mod:`~napari_wfss.session` and the modules it composes
(:mod:`~napari_wfss.project_store`, :mod:`~napari_wfss.statuses`, :mod:`~napari_wfss.tag_csv`), and
:func:`capped`, which keeps a message that lists problems (rows, images) short."""

from __future__ import annotations

from collections.abc import Sequence

from hhn.errors import UserError

MAX_LISTED = 20  #: the most lines a message lists before "... and N more"


def capped(lines: Sequence[str], limit: int = MAX_LISTED) -> list[str]:
    """``lines`` if there are at most ``limit`` of them, else the first ``limit`` and ``"... and N more"``."""
    if len(lines) <= limit:
        return list(lines)
    return [*lines[:limit], f"... and {len(lines) - limit} more"]


class SessionError(UserError):
    """A project cannot be created/opened, or an action is not allowed in the image's current state."""


class ProjectInUseError(SessionError):
    """Another session (window, process) holds the project for writing."""


class UnknownImageError(SessionError, KeyError):
    """An image name that is not part of the session."""

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return str(self.args[0]) if self.args else ""
