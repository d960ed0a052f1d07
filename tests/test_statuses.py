"""The image state machine on its own (no files): derived statuses and the transitions' rules."""

from __future__ import annotations

import pytest

from napari_wfss.session_errors import SessionError
from napari_wfss.statuses import ACCEPTED, EDITED, PROPOSED, REJECTED, TAGGED, UNTAGGED, ImageState

PROPOSAL = {"model": "m", "time": "t0", "scores": None, "classes": [1]}
MASK = {"time": "t1", "classes": [1]}


def test_status_follows_the_stored_fields():
    s = ImageState("a.png", "a")
    assert s.status == UNTAGGED
    s.tags.add(1)
    assert s.status == TAGGED
    s.propose(PROPOSAL)
    assert s.status == PROPOSED and s.takes_proposal
    s.edit(MASK)
    assert s.status == EDITED and not s.takes_proposal
    s.accept("t2")
    assert s.status == ACCEPTED and s.accepted == "t2"
    s.edit(MASK)  # an edit of an accepted mask must be accepted again
    assert s.status == EDITED and s.accepted is None
    s.drop_mask()
    assert s.status == PROPOSED
    s.drop_proposal()
    assert s.status == TAGGED


def test_reject_and_accept_rules():
    s = ImageState("a.png", "a")
    with pytest.raises(SessionError, match="nothing to accept for a.png"):
        s.accept("t")
    s.accept("t", dict(MASK))
    with pytest.raises(SessionError, match="a.png is accepted"):
        s.reject("t3")
    s.reject("t3", force=True)
    assert s.status == REJECTED and (s.proposal, s.mask, s.accepted) == (None, None, None)
    s.propose(PROPOSAL)  # a new proposal clears the rejection
    assert s.status == PROPOSED and s.rejected is None
