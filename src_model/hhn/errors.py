"""Exceptions whose messages tell the user what to do (no torch import here: the CLI imports it)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or missing resource; the message is actionable and shown without a traceback."""


class WeightsNotFoundError(UserError, FileNotFoundError):
    """A pretrained weight file is absent and cannot be downloaded; the message names the file and where to put it."""


class PriorUnavailableError(UserError):
    """A prior (e.g. CLIP text or Grad-CAM) cannot be computed because its weights are not available."""


class CheckpointError(UserError):
    """A checkpoint is unreadable, of the wrong format, or does not match the model configuration."""
