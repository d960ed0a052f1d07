"""Errors of the annotation session, shared by :mod:`~napari_wfss.session` and the modules it composes
(:mod:`~napari_wfss.project_store`, :mod:`~napari_wfss.statuses`, :mod:`~napari_wfss.tag_csv`)."""

from __future__ import annotations

from hhn.errors import UserError


class SessionError(UserError):
    """A project cannot be created/opened, or an action is not allowed in the image's current state."""


class ProjectInUseError(SessionError):
    """Another session (window, process) holds the project for writing."""


class UnknownImageError(SessionError, KeyError):
    """An image name that is not part of the session."""

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return str(self.args[0]) if self.args else ""
