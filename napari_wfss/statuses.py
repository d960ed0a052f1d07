"""Image statuses and the rules that move an image from one to another.

=========== ====================================================================================
untagged    nothing yet
tagged      has image-level tags (class names present), no proposal or mask
proposed    has a model proposal
edited      has a user mask (edits captured) that is not accepted yet
accepted    the user accepted the mask; never overwritten by a proposal. Also an image with a
            negative tag and no user mask: accepted as "no class present", its label map all background
rejected    the user rejected the proposal (it was deleted); a new proposal may replace it
=========== ====================================================================================

A negative tag (``no_class``; ``image,-`` or ``image,none`` in a tags CSV) says the image holds none of
the classes. It excludes class tags and a user mask painting a class (painting a class in an edit or an
accepted mask drops it). It hides a proposal made before it (the proposal is kept, and shows again when
the tag is removed) and keeps new ones out.

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
    no_class: str | None = None  # time of the negative tag: the user says the image holds none of the classes
    missing: bool = False  # the file is gone from the image folder (runtime only)

    @property
    def status(self) -> str:
        """One of :data:`STATUSES`."""
        if self.rejected:
            return REJECTED
        if self.mask is not None:
            return ACCEPTED if self.accepted else EDITED
        if self.no_class:
            return ACCEPTED
        if self.proposal is not None:
            return PROPOSED
        return TAGGED if self.tags else UNTAGGED

    @property
    def takes_proposal(self) -> bool:
        """False once the image has a user mask (edited or accepted) or a negative tag: a proposal never
        replaces the user's word."""
        return self.mask is None and not self.no_class

    def set_no_class(self, value: bool, time: str) -> bool:
        """Set (``True``, at ``time``) or remove the negative tag; returns False if it was already so.

        Setting it clears a rejection and accepts a user mask without classes, and raises
        :class:`SessionError` if the image has class tags or a user mask painting a class.
        """
        if value == bool(self.no_class):
            return False
        if value:
            if self.tags:
                raise SessionError(f"{self.path} is tagged with a class, and a negative tag says it holds none of "
                                   "the classes: remove its class tags first")
            if self.mask is not None and self.mask["classes"]:
                raise SessionError(f"{self.path} has a user mask painting a class, and a negative tag says it holds "
                                   "none of the classes: repaint it as background or reject it first")
            self.rejected = None
            if self.mask is not None:
                self.accepted = self.accepted or time
        self.no_class = time if value else None
        return True

    def propose(self, proposal: dict) -> None:
        """A new model proposal replaces any earlier one and clears a rejection: ``proposed``."""
        self.proposal = proposal
        self.rejected = None

    def edit(self, mask: dict) -> None:
        """The user's edited mask: ``edited``, also from ``accepted`` (the edit must be accepted again). A mask
        painting a class drops a negative tag."""
        self._set_mask(mask)
        self.accepted = None
        self.rejected = None

    def _set_mask(self, mask: dict) -> None:
        """Record the user's ``mask`` metadata; one painting a class drops the negative tag."""
        self.mask = mask
        if mask["classes"]:
            self.no_class = None

    def accept(self, time: str, mask: dict | None = None) -> None:
        """``accepted`` at ``time``, with ``mask`` if given, else the stored mask.

        Raises :class:`SessionError` if there is no mask to accept.
        """
        if mask is not None:
            self._set_mask(mask)
        if self.mask is None:
            raise SessionError(f"nothing to accept for {self.path}: propose it or paint a mask first")
        self.accepted = time
        self.rejected = None

    def reject(self, time: str, *, force: bool = False) -> None:
        """``rejected`` at ``time``: the proposal and any user mask are dropped.

        An accepted image (also one with a negative tag) raises :class:`SessionError` unless ``force``,
        which drops the negative tag too.
        """
        if (self.accepted or self.no_class) and not force:
            raise SessionError(
                f"{self.path} is accepted; to discard its mask reject it with force=True "
                "(or edit it: edits are kept as a new, unaccepted mask)"
            )
        self.proposal = self.mask = self.accepted = self.no_class = None
        self.rejected = time

    def drop_proposal(self) -> None:
        """Forget the proposal (its file is gone or no longer valid); a rejection stays."""
        self.proposal = None

    def drop_mask(self) -> None:
        """Forget the user mask and with it the acceptance (its file is gone)."""
        self.mask = self.accepted = None
