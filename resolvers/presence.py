"""The `presence(userIds:)` stream: the current state of each watched user, then online/offline transitions.

Only users who share a conversation with the viewer may be watched (the viewer may
watch themselves); anyone else is `FORBIDDEN`, whether or not they exist. The
privacy rules of `resolvers/privacy.py` apply at every event: someone who hides
their last seen shows `lastSeen: null`, and someone who blocked the viewer, no
longer shares a conversation with them, or has not yet sent a message in (nor
created) one they share, shows offline, without saying why. A user's first
message in a conversation is no transition, but makes their watchers read again
(`Presence.reveal`), so they show at once to those who may now see them.

The stream listens for transitions first and reads the state second: a
transition after the read arrives on the feed; one before it is in the read, and
its transition number (`seq`) tells the stream to drop it when it arrives. The
same number drops transitions that arrive out of order (published by different
processes). After a `Resync` (lost notices) the state is read again and only what
differs from what was shown is yielded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from resolvers import privacy
from resolvers.accounts import Viewer
from resolvers.errors import BadUserInput, Forbidden
from resolvers.records import PresenceChange
from resolvers.services import Services


@dataclass(frozen=True, slots=True)
class PresenceView:
    """What the viewer is shown of one user's presence."""

    user_id: int
    online: bool
    last_seen: datetime | None


async def watch_presence(services: Services, viewer: Viewer, user_ids: Sequence[int]) -> AsyncIterator[PresenceView]:
    """First the state of each watched user (in the order given), then only changes of what the viewer sees."""
    ids = list(dict.fromkeys(user_ids))
    limit = services.limits.max_presence_watch
    if not ids:
        raise BadUserInput("Name at least one user to watch.")
    if len(ids) > limit:
        raise BadUserInput(f"At most {limit} users can be watched at once.")
    # The viewer counts as sharing with themselves; unknown ids are absent, so refused too.
    visibility = await privacy.presence_visibility(services, viewer.user_id, ids)
    if any(not visibility.get(uid, privacy.HIDDEN).shares for uid in ids):
        raise Forbidden("You can only watch users you share a conversation with.")
    shown = _Shown(services, viewer.user_id, ids)
    async with services.presence.watch(ids) as feed:
        # Listening before reading (see the module docstring).
        for view in await shown.read(initial=True):
            yield view
        async for item in feed:
            views = await shown.apply(item) if isinstance(item, Sequence) else await shown.read(initial=False)
            for view in views:
                yield view


class _Shown:
    """What one stream has shown, and the last transition number it has taken into account per user."""

    def __init__(self, services: Services, viewer_id: int, user_ids: list[int]) -> None:
        self._services = services
        self._viewer_id = viewer_id
        self._ids = user_ids
        self._seq: dict[int, int] = {}
        self._shown: dict[int, tuple[bool, bool]] = {}  # (online, last seen given) as shown

    async def read(self, *, initial: bool) -> list[PresenceView]:
        """The state of every watched user: all of it initially, afterwards what changed."""
        states = await self._services.presence.states(self._ids)
        visible = await privacy.presence_visibility(self._services, self._viewer_id, self._ids)
        views: list[PresenceView] = []
        for uid in self._ids:
            state = states.get(uid)
            if state is None:
                continue
            self._seq[uid] = state.seq  # a reset Redis counts from 0 again: take the read as it is
            view = self._view(uid, state.online, state.last_seen, visible.get(uid, privacy.HIDDEN))
            if initial or self._shown.get(uid) != _shown(view):
                self._shown[uid] = _shown(view)
                views.append(view)
        return views

    async def apply(self, changes: Sequence[PresenceChange]) -> list[PresenceView]:
        """The views of those changes that are new and change what the viewer sees."""
        latest: dict[int, PresenceChange] = {}
        for change in changes:
            if change.seq > self._seq.get(change.user_id, 0):
                self._seq[change.user_id] = change.seq
                latest[change.user_id] = change
        if not latest:
            return []
        # Privacy at every event: sharing, blocks and hidden last seen may have changed since.
        visible = await privacy.presence_visibility(self._services, self._viewer_id, list(latest))
        views: list[PresenceView] = []
        for uid, change in latest.items():
            view = self._view(uid, change.online, change.last_seen, visible.get(uid, privacy.HIDDEN))
            if self._shown.get(uid) != _shown(view):
                self._shown[uid] = _shown(view)
                views.append(view)
        return views

    @staticmethod
    def _view(
        uid: int, online: bool, last_seen: datetime | None, visibility: privacy.PresenceVisibility
    ) -> PresenceView:
        return PresenceView(uid, online and visibility.online, last_seen if visibility.last_seen else None)


def _shown(view: PresenceView) -> tuple[bool, bool]:
    """What a stream compares to tell whether a view changes what the viewer sees."""
    return view.online, view.last_seen is not None
