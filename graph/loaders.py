"""DataLoaders of one operation: batched, bounded, and cached for that operation only.

A WebSocket context lives as long as its connection (docs/upstream-notes.md), so loaders cannot
hang off the context: their caches would grow, and go stale, for hours. An operation
is told apart by its executor's root value and variable values: every HTTP request
and every WebSocket query or mutation coerces variables anew, and every subscription
event has its own payload as root value. The context keeps the loaders of its last
few operations only.

Each batch is at most `BATCH` keys, and the use cases split their IN lists the same
way: an unbounded IN list fails past the driver's bind-parameter limit.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from strawberry.dataloader import DataLoader

from models import Member, User
from resolvers import accounts, conversations, file_store, privacy
from resolvers.batches import IN_LIST_SIZE
from resolvers.conversations import ConversationHeader
from resolvers.privacy import PresenceVisibility

if TYPE_CHECKING:
    from graph.context import Context, Info

BATCH: Final = IN_LIST_SIZE
# Loader sets kept per context: more than the operations a socket may run at once
# (max_subscriptions_per_connection), so concurrent operations rarely evict each other.
SCOPES_PER_CONTEXT: Final = 32

MemberPageKey = tuple[int, int, int | None]
"""(conversation id, first, after user id)."""


class Loaders:
    """The DataLoaders of one operation (or one subscription event)."""

    def __init__(self, context: Context) -> None:
        self._context = context
        self.users: DataLoader[int, User | None] = DataLoader(self._load_users, max_batch_size=BATCH)
        self.online: DataLoader[int, bool] = DataLoader(self._load_online, max_batch_size=BATCH)
        self.last_seen: DataLoader[int, datetime | None] = DataLoader(self._load_last_seen, max_batch_size=BATCH)
        self.presence_visibility: DataLoader[int, PresenceVisibility] = DataLoader(
            self._load_visibility, max_batch_size=BATCH
        )
        self.conversations: DataLoader[int, ConversationHeader | None] = DataLoader(
            self._load_conversations, max_batch_size=BATCH
        )
        self.member_pages: DataLoader[MemberPageKey, list[Member]] = DataLoader(
            self._load_member_pages, max_batch_size=BATCH
        )
        self.thumbnails: DataLoader[int, str | None] = DataLoader(self._load_thumbnails, max_batch_size=BATCH)

    async def _load_thumbnails(self, ids: list[int]) -> list[str | None]:
        async with self._context.services.db.session() as session:
            found = await file_store.thumbnail_keys(session, ids)
        return [found.get(upload_id) for upload_id in ids]

    async def _load_users(self, ids: list[int]) -> list[User | None]:
        found = await accounts.get_users(self._context.services, ids)
        return [found.get(uid) for uid in ids]

    async def _load_online(self, ids: list[int]) -> list[bool]:
        online = await self._context.services.presence.online(ids)
        return [uid in online for uid in ids]

    async def _load_last_seen(self, ids: list[int]) -> list[datetime | None]:
        seen = await self._context.services.presence.last_seen(ids)
        return [seen.get(uid) for uid in ids]

    async def _load_visibility(self, ids: list[int]) -> list[PresenceVisibility]:
        viewer = await self._context.require_viewer()
        found = await privacy.presence_visibility(self._context.services, viewer.user_id, ids)
        return [found.get(uid, privacy.HIDDEN) for uid in ids]

    async def _load_conversations(self, ids: list[int]) -> list[ConversationHeader | None]:
        viewer = await self._context.require_viewer()
        found = await conversations.conversation_headers(self._context.services, viewer, ids)
        return [found.get(cid) for cid in ids]

    async def _load_member_pages(self, keys: list[MemberPageKey]) -> list[list[Member]]:
        # Usually one group: every conversation of a list asks for the same page.
        groups: defaultdict[tuple[int, int | None], list[int]] = defaultdict(list)
        for cid, first, after in keys:
            groups[(first, after)].append(cid)
        pages: dict[MemberPageKey, list[Member]] = {}
        for (first, after), ids in groups.items():
            found = await conversations.member_pages(self._context.services, ids, first=first, after=after)
            pages.update(((cid, first, after), found.get(cid, [])) for cid in ids)
        return [pages[key] for key in keys]


class LoaderScopes:
    """The loaders of a context's most recent operations, keyed by operation."""

    __slots__ = ("_context", "_scopes")

    def __init__(self, context: Context) -> None:
        self._context = context
        self._scopes: OrderedDict[tuple[int, int], tuple[Any, Any, Loaders]] = OrderedDict()

    def get(self, info: Info) -> Loaders:
        """The loaders of the operation `info` belongs to, made on first use."""
        raw = info._raw_info  # the executor's values themselves (strawberry's property copies the variables)
        root, variables = raw.root_value, raw.variable_values
        key = (id(root), id(variables))
        entry = self._scopes.get(key)
        # The entry holds both objects, so their ids cannot be reused while it exists.
        if entry is not None and entry[0] is root and entry[1] is variables:
            return entry[2]
        loaders = Loaders(self._context)
        self._scopes[key] = (root, variables, loaders)
        if len(self._scopes) > SCOPES_PER_CONTEXT:
            self._scopes.popitem(last=False)
        return loaders
