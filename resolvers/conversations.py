"""Conversations: direct chats, groups and their roles, and the viewer's list (muting: resolvers/conversation_state.py).

Every change is announced as a durable `ConversationEvent` in the inboxes of the
users concerned (the members after the change, plus anyone removed or leaving),
written in the same transaction as the change and published after commit.

Lock order, the same as `sendMessage`'s (infra/pg_inbox_store.py): the conversation row
(FOR NO KEY UPDATE), then member rows, then inbox heads in user id order. A change
to a group therefore waits for sends in flight there and the other way round, and
neither can deadlock the other.

Fan-out is limited per user and hour (settings): conversations created (a direct
conversation that exists already does not count), users added to groups, renames.
A user who blocked the viewer cannot be put in a conversation by them (resolvers/blocks.py).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlmodel import col

from models import Ban, Conversation, ConversationKind, EventKind, Member, MemberRole, User
from models.columns import utcnow
from resolvers import encryption
from resolvers.accounts import Viewer
from resolvers.batches import chunks
from resolvers.blocks import refuse_if_blocked
from resolvers.errors import BadUserInput, Forbidden, NotFound
from resolvers.inbox import Appended, append_events
from resolvers.member_state import MemberState
from resolvers.publish import commit_then_publish
from resolvers.rate_limits import spend
from resolvers.services import Services
from resolvers.text import check_visible_text
from resolvers.webhooks import stage

log = logging.getLogger("parley.conversations")

MAX_TITLE = 100
# Pages of the viewer's conversation list and of a conversation's members (issue 7:
# a list of every conversation with every member was one unbounded query).
CONVERSATIONS_PAGE = 50
MAX_CONVERSATIONS_PAGE = 100
MEMBERS_PAGE = 100
MAX_MEMBERS_PAGE = 100
MANAGERS = (MemberRole.OWNER, MemberRole.ADMIN)
HOUR = 3600


class Change:
    """The `ConversationChange` values, as stored in event payloads."""

    CREATED = "CREATED"
    MEMBERS_ADDED = "MEMBERS_ADDED"
    MEMBER_REMOVED = "MEMBER_REMOVED"
    RENAMED = "RENAMED"
    LEFT = "LEFT"
    ROLE_CHANGED = "ROLE_CHANGED"
    # resolvers/disappearing.py
    DISAPPEARING_TIMER_CHANGED = "DISAPPEARING_TIMER_CHANGED"
    # resolvers/invites.py
    JOINED = "JOINED"


# The webhook event of each change (any other is `conversation.changed`, with the change named).
_WEBHOOK_EVENTS = {
    Change.CREATED: "conversation.created",
    Change.MEMBERS_ADDED: "member.added",
    Change.JOINED: "member.added",
    Change.MEMBER_REMOVED: "member.removed",
    Change.LEFT: "member.removed",
}


@dataclass(frozen=True, slots=True)
class ConversationHeader:
    """A conversation as one viewer sees it, without its members (those come in pages).

    `is_member` is False for a conversation the viewer has left or was removed from
    (an event still names it): its members are not shown.
    """

    conversation: Conversation
    muted: bool
    is_member: bool
    # The viewer's own view of it: unread badges, mute, archive, pin (resolvers/member_state.py).
    state: MemberState = field(default_factory=MemberState)

    @property
    def id(self) -> int:
        assert self.conversation.id is not None
        return self.conversation.id


@dataclass(frozen=True)
class ConversationView:
    """A conversation as one viewer sees it."""

    conversation: Conversation
    members: list[Member]
    muted: bool
    state: MemberState = field(default_factory=MemberState)

    @property
    def id(self) -> int:
        assert self.conversation.id is not None
        return self.conversation.id


def _title(value: str) -> str:
    title = " ".join(value.split())
    if not 1 <= len(title) <= MAX_TITLE:
        raise BadUserInput(f"A group title is 1 to {MAX_TITLE} characters.")
    return check_visible_text(title, what="A group title")


def _user_ids(values: Sequence[int], *, limit: int) -> list[int]:
    unique = list(dict.fromkeys(values))
    if len(unique) > limit:
        raise BadUserInput(f"A group has at most {limit} members.")
    return unique


async def _require_users(session: AsyncSession, user_ids: Sequence[int]) -> None:
    if not user_ids:
        return
    # FOR SHARE: waits for an account deletion in flight (resolvers/account_deletion.py), then sees
    # it, and a deletion waits for this: nobody is put in a conversation their deletion missed.
    found = set(
        (
            await session.execute(
                select(col(User.id))
                .where(col(User.id).in_(user_ids), col(User.deleted_at).is_(None))
                .with_for_update(read=True)
            )
        ).scalars()
    )
    if missing := [uid for uid in user_ids if uid not in found]:
        raise NotFound(f"No such user: {missing[0]}.")


async def banned_among(
    session: AsyncSession, conversation_id: int, user_ids: Sequence[int], *, now: datetime
) -> list[int]:
    """Those of `user_ids` banned from the conversation (resolvers/bans.py); a ban past its expiry no longer counts."""
    if not user_ids:
        return []
    return list(
        (
            await session.execute(
                select(col(Ban.user_id)).where(
                    col(Ban.conversation_id) == conversation_id,
                    col(Ban.user_id).in_(list(user_ids)),
                    col(Ban.expires_at).is_(None) | (col(Ban.expires_at) > now),
                )
            )
        ).scalars()
    )


async def membership(session: AsyncSession, conversation_id: int, user_id: int) -> Member:
    """The viewer's membership; `NotFound` for non-members, exactly as for a missing conversation."""
    member = await session.get(Member, (conversation_id, user_id))
    if member is None:
        raise NotFound("No such conversation.")
    return member


async def member_ids(session: AsyncSession, conversation_id: int) -> list[int]:
    """Every member's user id."""
    return list(
        (
            await session.execute(select(col(Member.user_id)).where(col(Member.conversation_id) == conversation_id))
        ).scalars()
    )


async def _group(session: AsyncSession, conversation_id: int, viewer: Viewer) -> tuple[Conversation, Member]:
    # The conversation row first, then members (the global lock order); membership is read
    # after the lock, so it reflects every change committed before ours.
    conversation = await session.get(Conversation, conversation_id, with_for_update={"key_share": True})
    me = await membership(session, conversation_id, viewer.user_id)
    assert conversation is not None
    if conversation.kind is not ConversationKind.GROUP:
        raise BadUserInput("Only group conversations have members to change.")
    return conversation, me


async def _spend(services: Services, key: str, *, limit: int, amount: int = 1, what: str) -> None:
    """Counts `amount` against the viewer's hourly `limit`; `RateLimited` past it (fails open)."""
    refusal = f"At most {limit} {what} an hour; try again later."
    await spend(services, key, limit=limit, window_seconds=HOUR, refusal=refusal, amount=amount)


async def _spend_conversation(services: Services, viewer: Viewer) -> None:
    limit = services.limits.conversations_per_hour
    await _spend(services, f"conversations:{viewer.user_id}", limit=limit, what="new conversations")


async def _spend_additions(services: Services, viewer: Viewer, count: int) -> None:
    limit = services.limits.member_additions_per_hour
    await _spend(services, f"additions:{viewer.user_id}", limit=limit, amount=count, what="users added to groups")


def _require_manager(me: Member) -> None:
    if me.role not in MANAGERS:
        raise Forbidden("Only the group's owner or an admin can do that.")


def require_editor(conversation: Conversation, me: Member) -> None:
    """A group's title and disappearing timer: owners and admins, or every member once `only_admins_edit` is off."""
    if conversation.only_admins_edit:
        _require_manager(me)


async def _announce(
    session: AsyncSession,
    conversation_id: int,
    change: str,
    *,
    actor_id: int,
    users: Sequence[int] = (),
    also_notify: Sequence[int] = (),
) -> list[Appended]:
    recipients = [*await member_ids(session, conversation_id), *also_notify]
    payload = {
        "change": change,
        "conversation_id": conversation_id,
        "user_ids": list(users),
        "actor_id": actor_id,
        "at": utcnow().isoformat(),
    }
    # The one place conversation changes are announced: integrations hear of them here too.
    stage(
        session,
        _WEBHOOK_EVENTS.get(change, "conversation.changed"),
        {"conversation_id": conversation_id, "change": change, "actor_id": actor_id, "user_ids": list(users)},
    )
    return await append_events(session, recipients, EventKind.CONVERSATION, payload=payload)


async def announce(
    session: AsyncSession,
    conversation_id: int,
    change: str,
    *,
    actor_id: int,
    users: Sequence[int] = (),
    also_notify: Sequence[int] = (),
) -> list[Appended]:
    """Appends the ConversationEvent of `change` to every member's inbox (and `also_notify`'s), in the caller's transaction."""
    return await _announce(session, conversation_id, change, actor_id=actor_id, users=users, also_notify=also_notify)


async def pass_ownership(session: AsyncSession, conversation_id: int) -> Member | None:
    """Once an OWNER has gone: the oldest ADMIN, else the oldest member, becomes OWNER unless one is left.

    Returns the new owner (None when an owner remains or nobody does); the caller announces it.
    """
    rest = list(
        (
            await session.execute(
                select(Member)
                .where(col(Member.conversation_id) == conversation_id)
                .order_by(col(Member.joined_at), col(Member.user_id))
            )
        ).scalars()
    )
    if not rest or any(m.role is MemberRole.OWNER for m in rest):
        return None
    heir = next((m for m in rest if m.role is MemberRole.ADMIN), rest[0])
    heir.role = MemberRole.OWNER
    session.add(heir)
    await session.flush()
    log.info("group %s: ownership passed to user %s", conversation_id, heir.user_id)
    return heir


async def _view(session: AsyncSession, conversation_id: int, viewer_id: int) -> ConversationView:
    views = await _views(session, [conversation_id], viewer_id)
    return views[0]


async def _views(
    session: AsyncSession, conversation_ids: Sequence[int], viewer_id: int, *, now: datetime | None = None
) -> list[ConversationView]:
    if not conversation_ids:
        return []
    conversations = {
        c.id: c
        for c in (
            await session.execute(select(Conversation).where(col(Conversation.id).in_(conversation_ids)))
        ).scalars()
    }
    members: dict[int, list[Member]] = defaultdict(list)
    for member in (
        await session.execute(
            select(Member)
            .where(col(Member.conversation_id).in_(conversation_ids))
            .order_by(col(Member.joined_at), col(Member.user_id))
        )
    ).scalars():
        members[member.conversation_id].append(member)
    views = []
    for cid in conversation_ids:
        if (conversation := conversations.get(cid)) is None:
            continue
        mine = next((m for m in members[cid] if m.user_id == viewer_id), None)
        state = MemberState.of(mine, now or utcnow())
        views.append(ConversationView(conversation, members[cid], muted=state.muted, state=state))
    return views


async def view_of(session: AsyncSession, conversation_id: int, viewer_id: int, *, now: datetime) -> ConversationView:
    """The conversation as the viewer sees it at `now` (a mutation's result)."""
    return (await _views(session, [conversation_id], viewer_id, now=now))[0]


async def _create(
    session: AsyncSession,
    conversation: Conversation,
    roles: dict[int, MemberRole],
    *,
    actor_id: int,
) -> tuple[ConversationView, list[Appended]]:
    """Stores a new conversation with its members and announces it as CREATED.

    The creator is engaged in it from the start (their presence shows to its members); the
    others only once they send a message there (resolvers/privacy.py).
    """
    session.add(conversation)
    await session.flush()
    assert conversation.id is not None
    now = utcnow()
    session.add_all(
        [
            Member(conversation_id=conversation.id, user_id=uid, role=role, joined_at=now, engaged=uid == actor_id)
            for uid, role in roles.items()
        ]
    )
    await session.flush()
    appended = await _announce(session, conversation.id, Change.CREATED, actor_id=actor_id, users=list(roles))
    return await _view(session, conversation.id, actor_id), appended


async def start_direct_conversation(
    services: Services, viewer: Viewer, *, user_id: int, encrypted: bool = False
) -> ConversationView:
    """The one DIRECT conversation of the viewer and `user_id`, created on first use (idempotent).

    The end-to-end encrypted one (`encrypted`) is another conversation of the same pair.

    `Forbidden` when it does not exist yet and `user_id` has blocked the viewer; only a
    creation counts against the hourly limit.
    """
    if user_id == viewer.user_id:
        raise BadUserInput("A direct conversation needs another user.")
    low, high = sorted((viewer.user_id, user_id))
    key = encryption.direct_key(low, high, encrypted=encrypted)

    async def work(session: AsyncSession) -> tuple[ConversationView, list[Appended]]:
        existing = (
            await session.execute(select(col(Conversation.id)).where(col(Conversation.direct_key) == key))
        ).scalar()
        if existing is not None:
            # Even if the other has blocked the viewer since: it is theirs already, and what
            # they send in it is no longer delivered (nothing here says so).
            return await _view(session, existing, viewer.user_id), []
        await _require_users(session, [user_id])
        await refuse_if_blocked(session, viewer.user_id, [user_id])
        await _spend_conversation(services, viewer)
        roles = {viewer.user_id: MemberRole.MEMBER, user_id: MemberRole.MEMBER}
        return await _create(
            session,
            Conversation(kind=ConversationKind.DIRECT, direct_key=key, encrypted=encrypted),
            roles,
            actor_id=viewer.user_id,
        )

    try:
        return await commit_then_publish(services, work)
    except IntegrityError:
        # Both users started it at once: the other transaction won; return its conversation.
        async with services.db.session() as session:
            existing = (
                await session.execute(select(col(Conversation.id)).where(col(Conversation.direct_key) == key))
            ).scalar()
            if existing is None:
                raise
            return await _view(session, existing, viewer.user_id)


async def create_group(
    services: Services, viewer: Viewer, *, title: str, member_ids: Sequence[int], encrypted: bool = False
) -> ConversationView:
    """A GROUP with the viewer as OWNER and the others as MEMBERs; at most `max_group_members` in all.

    Counts as a new conversation and its members as users added (hourly limits); `Forbidden`
    when one of them has blocked the viewer.
    """
    name = _title(title)
    limit = services.limits.max_group_members
    others = [uid for uid in _user_ids(member_ids, limit=limit) if uid != viewer.user_id]
    if len(others) + 1 > limit:
        raise BadUserInput(f"A group has at most {limit} members.")

    async def work(session: AsyncSession) -> tuple[ConversationView, list[Appended]]:
        await _require_users(session, others)
        await refuse_if_blocked(session, viewer.user_id, others)
        await _spend_conversation(services, viewer)
        await _spend_additions(services, viewer, len(others))
        roles = {viewer.user_id: MemberRole.OWNER, **dict.fromkeys(others, MemberRole.MEMBER)}
        return await _create(
            session,
            Conversation(kind=ConversationKind.GROUP, title=name, encrypted=encrypted),
            roles,
            actor_id=viewer.user_id,
        )

    view = await commit_then_publish(services, work)
    log.info("user %s created group %s with %d members", viewer.user_id, view.id, len(view.members))
    return view


async def add_members(
    services: Services, viewer: Viewer, *, conversation_id: int, user_ids: Sequence[int]
) -> ConversationView:
    """Adds users to a group (OWNER or ADMIN); users already in it are left as they are.

    The users actually added count against the viewer's hourly limit; `Forbidden` when one
    of them has blocked the viewer or is banned from the group.
    """
    limit = services.limits.max_group_members
    wanted = _user_ids(user_ids, limit=limit)
    if not wanted:
        raise BadUserInput("Name at least one user to add.")

    async def work(session: AsyncSession) -> tuple[ConversationView, list[Appended]]:
        _, me = await _group(session, conversation_id, viewer)
        _require_manager(me)
        await _require_users(session, wanted)
        current = set(await member_ids(session, conversation_id))
        new = [uid for uid in wanted if uid not in current]
        if len(current) + len(new) > limit:
            raise BadUserInput(f"A group has at most {limit} members.")
        if not new:
            return await _view(session, conversation_id, viewer.user_id), []
        if await banned_among(session, conversation_id, new, now=services.clock()):
            raise Forbidden("One of these users is banned from this group: unban them first.")
        await refuse_if_blocked(session, viewer.user_id, new)
        await _spend_additions(services, viewer, len(new))
        now = utcnow()
        session.add_all(
            [
                Member(
                    conversation_id=conversation_id,
                    user_id=uid,
                    role=MemberRole.MEMBER,
                    joined_at=now,
                )
                for uid in new
            ]
        )
        await session.flush()
        appended = await _announce(session, conversation_id, Change.MEMBERS_ADDED, actor_id=viewer.user_id, users=new)
        return await _view(session, conversation_id, viewer.user_id), appended

    return await commit_then_publish(services, work)


async def remove_member(services: Services, viewer: Viewer, *, conversation_id: int, user_id: int) -> ConversationView:
    """Removes a member (OWNER or ADMIN; only an OWNER removes an OWNER). Effective at once."""
    if user_id == viewer.user_id:
        raise BadUserInput("To remove yourself, use leaveGroup.")

    async def work(session: AsyncSession) -> tuple[ConversationView, list[Appended]]:
        _, me = await _group(session, conversation_id, viewer)
        _require_manager(me)
        target = await session.get(Member, (conversation_id, user_id))
        if target is None:
            raise NotFound("That user is not a member of this conversation.")
        if target.role is MemberRole.OWNER and me.role is not MemberRole.OWNER:
            raise Forbidden("Only an owner can remove an owner.")
        await session.delete(target)
        await session.flush()
        appended = await _announce(
            session,
            conversation_id,
            Change.MEMBER_REMOVED,
            actor_id=viewer.user_id,
            users=[user_id],
            also_notify=[user_id],
        )
        return await _view(session, conversation_id, viewer.user_id), appended

    view = await commit_then_publish(services, work)
    log.info("user %s removed user %s from group %s", viewer.user_id, user_id, conversation_id)
    return view


async def set_member_role(
    services: Services, viewer: Viewer, *, conversation_id: int, user_id: int, role: MemberRole
) -> ConversationView:
    """Changes a member's role (OWNER only); a group keeps at least one OWNER."""

    async def work(session: AsyncSession) -> tuple[ConversationView, list[Appended]]:
        _, me = await _group(session, conversation_id, viewer)
        if me.role is not MemberRole.OWNER:
            raise Forbidden("Only an owner can change roles.")
        target = await session.get(Member, (conversation_id, user_id))
        if target is None:
            raise NotFound("That user is not a member of this conversation.")
        if target.role is role:
            return await _view(session, conversation_id, viewer.user_id), []
        if target.role is MemberRole.OWNER:
            owners = await session.scalar(
                select(func.count()).where(
                    col(Member.conversation_id) == conversation_id, col(Member.role) == MemberRole.OWNER
                )
            )
            if (owners or 0) <= 1:
                raise BadUserInput("A group needs an owner: make someone else OWNER first.")
        target.role = role
        session.add(target)
        await session.flush()
        appended = await _announce(
            session, conversation_id, Change.ROLE_CHANGED, actor_id=viewer.user_id, users=[user_id]
        )
        return await _view(session, conversation_id, viewer.user_id), appended

    return await commit_then_publish(services, work)


async def rename_group(services: Services, viewer: Viewer, *, conversation_id: int, title: str) -> ConversationView:
    """Renames a group (OWNER or ADMIN, any member once onlyAdminsEdit is off); a change counts against an hourly limit."""
    name = _title(title)

    async def work(session: AsyncSession) -> tuple[ConversationView, list[Appended]]:
        conversation, me = await _group(session, conversation_id, viewer)
        require_editor(conversation, me)
        if conversation.title == name:
            return await _view(session, conversation_id, viewer.user_id), []
        await _spend(services, f"renames:{viewer.user_id}", limit=services.limits.renames_per_hour, what="renames")
        conversation.title = name
        session.add(conversation)
        await session.flush()
        appended = await _announce(session, conversation_id, Change.RENAMED, actor_id=viewer.user_id)
        return await _view(session, conversation_id, viewer.user_id), appended

    return await commit_then_publish(services, work)


async def leave_group(services: Services, viewer: Viewer, *, conversation_id: int) -> None:
    """The viewer leaves; the last OWNER hands ownership to the oldest ADMIN, else the oldest member."""

    async def work(session: AsyncSession) -> tuple[None, list[Appended]]:
        _, me = await _group(session, conversation_id, viewer)
        await session.delete(me)
        await session.flush()
        if me.role is MemberRole.OWNER:
            await pass_ownership(session, conversation_id)
        appended = await _announce(
            session,
            conversation_id,
            Change.LEFT,
            actor_id=viewer.user_id,
            users=[viewer.user_id],
            also_notify=[viewer.user_id],
        )
        return None, appended

    await commit_then_publish(services, work)


async def get_conversation(services: Services, viewer: Viewer, conversation_id: int) -> ConversationHeader:
    """One conversation of the viewer's, without its members (`member_pages`); `NotFound` for others."""
    found = await conversation_headers(services, viewer, [conversation_id])
    header = found.get(conversation_id)
    if header is None or not header.is_member:
        raise NotFound("No such conversation.")
    return header


async def conversation_headers(
    services: Services, viewer: Viewer, conversation_ids: Sequence[int]
) -> dict[int, ConversationHeader]:
    """Conversations by id as the viewer sees them, in one session; missing ones are absent.

    Also for conversations the viewer has left (events name them): `is_member` says
    whether their members may be shown. The caller decides who may ask for which id.
    """
    unique = list(dict.fromkeys(conversation_ids))
    found: dict[int, ConversationHeader] = {}
    if not unique:
        return found
    mine = (col(Member.conversation_id) == col(Conversation.id)) & (col(Member.user_id) == viewer.user_id)
    now = services.clock()
    async with services.db.session() as session:
        for chunk in chunks(unique):
            rows = await session.execute(
                select(Conversation, Member).outerjoin(Member, mine).where(col(Conversation.id).in_(chunk))
            )
            for conversation, member in rows:
                assert conversation.id is not None
                state = MemberState.of(member, now)
                found[conversation.id] = ConversationHeader(
                    conversation, muted=state.muted, is_member=member is not None, state=state
                )
    return found


async def member_pages(
    services: Services, conversation_ids: Sequence[int], *, first: int, after: int | None
) -> dict[int, list[Member]]:
    """Up to `first` members of each conversation, in joining order, after the member `after`.

    One statement per 1,000 conversations. A page after a user who is not a member
    is empty. The caller checks the viewer may see these conversations' members.
    """
    if not 1 <= first <= MAX_MEMBERS_PAGE:
        raise BadUserInput(f"first is between 1 and {MAX_MEMBERS_PAGE}.")
    unique = list(dict.fromkeys(conversation_ids))
    pages: dict[int, list[Member]] = {cid: [] for cid in unique}
    if not unique:
        return pages
    async with services.db.session() as session:
        for chunk in chunks(unique):
            query = select(
                Member,
                func.row_number()
                .over(
                    partition_by=col(Member.conversation_id),
                    order_by=(col(Member.joined_at), col(Member.user_id)),
                )
                .label("n"),
            ).where(col(Member.conversation_id).in_(chunk))
            if after is not None:
                cursor = aliased(Member)
                query = query.join(
                    cursor,
                    (col(cursor.conversation_id) == col(Member.conversation_id)) & (col(cursor.user_id) == after),
                ).where(
                    (col(Member.joined_at) > col(cursor.joined_at))
                    | ((col(Member.joined_at) == col(cursor.joined_at)) & (col(Member.user_id) > after))
                )
            ranked = query.subquery()
            member = aliased(Member, ranked)
            rows = await session.execute(
                select(member)
                .where(ranked.c.n <= first)
                .order_by(col(member.conversation_id), col(member.joined_at), col(member.user_id))
            )
            for row in rows.scalars():
                pages[row.conversation_id].append(row)
    return pages


def page_of(members: Sequence[Member], *, first: int, after: int | None) -> list[Member]:
    """The same page as `member_pages`, cut from a conversation's full member list (in joining order)."""
    if not 1 <= first <= MAX_MEMBERS_PAGE:
        raise BadUserInput(f"first is between 1 and {MAX_MEMBERS_PAGE}.")
    start = 0
    if after is not None:
        position = next((i for i, m in enumerate(members) if m.user_id == after), None)
        if position is None:
            return []
        start = position + 1
    return list(members[start : start + first])


async def list_conversations(
    services: Services,
    viewer: Viewer,
    *,
    first: int = CONVERSATIONS_PAGE,
    after: int | None = None,
    archived: bool = False,
) -> list[ConversationHeader]:
    """A page of the viewer's conversations: pinned ones first, then most recently active first.

    Only the archived ones with `archived`, else only the others. A conversation whose
    activity changes between two pages moves: it may be listed twice or missed, so clients
    refresh from the first page on a new message. `after` naming a conversation the viewer
    is not in gives an empty page.
    """
    if not 1 <= first <= MAX_CONVERSATIONS_PAGE:
        raise BadUserInput(f"first is between 1 and {MAX_CONVERSATIONS_PAGE}.")
    pinned = case((col(Member.pinned_at).is_not(None), 1), else_=0)
    query = (
        select(Conversation, Member)
        .join(Member, col(Member.conversation_id) == col(Conversation.id))
        .where(col(Member.user_id) == viewer.user_id, col(Member.archived).is_(archived))
    )
    if after is not None:
        cursor = aliased(Conversation)
        mine = aliased(Member)
        cursor_pinned = case((col(mine.pinned_at).is_not(None), 1), else_=0)
        query = (
            query.join(cursor, col(cursor.id) == after)
            .join(mine, (col(mine.conversation_id) == col(cursor.id)) & (col(mine.user_id) == viewer.user_id))
            .where(
                (pinned < cursor_pinned)
                | (
                    (pinned == cursor_pinned)
                    & (
                        (col(Conversation.last_activity_at) < col(cursor.last_activity_at))
                        | (
                            (col(Conversation.last_activity_at) == col(cursor.last_activity_at))
                            & (col(Conversation.id) < col(cursor.id))
                        )
                    )
                )
            )
        )
    order = (pinned.desc(), col(Conversation.last_activity_at).desc(), col(Conversation.id).desc())
    query = query.order_by(*order).limit(first)
    now = services.clock()
    async with services.db.session() as session:
        rows = (await session.execute(query)).all()
    headers = []
    for conversation, member in rows:
        state = MemberState.of(member, now)
        headers.append(ConversationHeader(conversation, muted=state.muted, is_member=True, state=state))
    return headers
