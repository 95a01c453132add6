"""Mentions: which users a message names, checked before the send stores anything.

A message names current members only; the send statement checks that under its locks and
stores nothing otherwise (`SendOutcome.mentions_ok`). Naming oneself is ignored: the sender
is dropped from the list (it would count nothing and push nobody), as are repeats.
"""

from __future__ import annotations

from collections.abc import Sequence

from resolvers.accounts import Viewer
from resolvers.errors import BadUserInput
from resolvers.services import Services

NOT_MEMBERS = "Only members of the conversation can be mentioned."


def check_mentions(services: Services, viewer: Viewer, user_ids: Sequence[int]) -> list[int]:
    """The distinct users a send mentions, without the sender; `BadUserInput` past the member cap."""
    limit = services.limits.max_group_members
    if len(user_ids) > limit:
        raise BadUserInput(f"A message mentions at most {limit} users.")
    return sorted({uid for uid in user_ids if uid != viewer.user_id})
