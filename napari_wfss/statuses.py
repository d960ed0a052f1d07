"""Image statuses and the rules that move an image from one to another.

=========== ====================================================================================
untagged    nothing yet
tagged      has image-level tags (class names present), no proposal or mask
proposed    has a model proposal
edited      has a user mask (edits captured) that is not accepted yet
accepted    the user accepted the mask; never overwritten by a proposal
rejected    the user rejected the proposal (it was deleted); a new proposal may replace it
=========== ====================================================================================

The status is derived from what is stored for the image (:class:`ImageState`), so it cannot disagree
with the files; the transitions are the methods of :class:`ImageState`. Tags are independent of
status: a proposed or accepted image keeps its tags. Writing the label-map files is the session's job:
it writes a file first, then records it here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .session_errors import SessionError

UNTAGGED, TAGGED, PROPOSED, EDITED, ACCEPTED, REJECTED = (
    "untagged", "tagged", "proposed", "edited", "accepted", "rejected",
)
STATUSES = (UNTAGGED, TAGGED, PROPOSED, EDITED, ACCEPTED, REJECTED)


@dataclass
class ImageState:
    """One image's mutable state. ``tags`` are class ids; ``proposal`` and ``mask`` are the metadata of
    the stored label maps as kept in project.json; times are ISO 8601 UTC strings."""

    path: str
    key: str
    tags: set[int] = field(default_factory=set)
    proposal: dict | None = None  # {"model", "time", "scores", "classes"}
    mask: dict | None = None  # {"time", "classes"}
    accepted: str | None = None  # time of acceptance
    rejected: str | None = None  # time of rejection
    missing: bool = False  # the file is gone from the image folder (runtime only)

    @property
    def status(self) -> str:
        """One of :data:`STATUSES`."""
        if self.rejected:
            return REJECTED
        if self.mask is not None:
            return ACCEPTED if self.accepted else EDITED
        if self.proposal is not None:
            return PROPOSED
        return TAGGED if self.tags else UNTAGGED

    @property
    def takes_proposal(self) -> bool:
        """False once the image has a user mask (edited or accepted): a proposal never replaces it."""
        return self.mask is None

    def propose(self, proposal: dict) -> None:
        """A new model proposal replaces any earlier one and clears a rejection: ``proposed``."""
        self.proposal = proposal
        self.rejected = None

    def edit(self, mask: dict) -> None:
        """The user's edited mask: ``edited``, also from ``accepted`` (the edit must be accepted again)."""
        self.mask = mask
        self.accepted = None
        self.rejected = None

    def accept(self, time: str, mask: dict | None = None) -> None:
        """``accepted`` at ``time``, with ``mask`` if given, else the stored mask.

        Raises :class:`SessionError` if there is no mask to accept.
        """
        if mask is not None:
            self.mask = mask
        if self.mask is None:
            raise SessionError(f"nothing to accept for {self.path}: propose it or paint a mask first")
        self.accepted = time
        self.rejected = None

    def reject(self, time: str, *, force: bool = False) -> None:
        """``rejected`` at ``time``: the proposal and any user mask are dropped.

        An accepted image raises :class:`SessionError` unless ``force``.
        """
        if self.accepted and not force:
            raise SessionError(
                f"{self.path} is accepted; to discard its mask reject it with force=True "
                "(or edit it: edits are kept as a new, unaccepted mask)"
            )
        self.proposal = self.mask = self.accepted = None
        self.rejected = time

    def drop_proposal(self) -> None:
        """Forget the proposal (its file is gone or no longer valid); a rejection stays."""
        self.proposal = None

    def drop_mask(self) -> None:
        """Forget the user mask and with it the acceptance (its file is gone)."""
        self.mask = self.accepted = None
