"""The hot path on PostgreSQL: send, acknowledge and read back, each one statement on asyncpg.

Profiled, SQLAlchemy's ORM spent milliseconds of Python per send or acknowledgement
(statement construction, unit-of-work flushes, identity loads), far more than PostgreSQL
itself; one prepared statement of data-modifying CTEs on asyncpg costs a small fraction
of that (bench/README.md has the harness's numbers). The tables and their migrations
stay in `models/` and Alembic; only these statements bypass SQLAlchemy.

Rules the statements keep:
- Locks are taken in one global order: conversation row, member rows, inbox heads in
  user id order (`ORDER BY … FOR UPDATE`), so sends, acknowledgements and group changes
  cannot deadlock each other; a deadlock is retried anyway.
- Heads stay locked until commit, so one user's entries commit in position order.
- All sub-statements of one `WITH` share one snapshot: the prune computes its floor
  from the rows it locked, and the orphaned-message check runs as a later
  statement (`delete_orphans`), after the pruning commit, because two readers of
  one group message pruning at once would each still see the other's entry.
- Acknowledgements are group-committed (`infra/coalesce.py`): those that arrive
  while one batch is written go together into the next statement.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from infra.coalesce import Coalescer
from infra.database_url import asyncpg_dsn
from resolvers.errors import Unavailable
from resolvers.records import AckOutcome, AttachmentClaim, EarlierSend, SendOutcome, StoredEntry, StoredMessage

log = logging.getLogger("parley.pg_inbox_store")

T = TypeVar("T")

_RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
# A server that is down, restarting or full: the statement did not run (or its connection is
# gone), so it is tried once more on a fresh connection, then answered UNAVAILABLE. 57P01-57P03
# are the shutdown and "starting up" refusals, 53300 "too many connections".
_CONNECTION_LOST = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    # Failover: a write reached a demoted or fenced server (25006), or no server is writable yet.
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.TargetServerAttributeNotMatched,
    ConnectionError,
    OSError,
)


@dataclass(frozen=True, slots=True)
class _Ack:
    device_id: int
    user_id: int
    seq: int
    at: datetime


class StoreUnavailable(Unavailable):
    """PostgreSQL did not answer: the ports' `Unavailable` (shown to clients as UNAVAILABLE)."""


# Locks in the one order every writer of a conversation keeps (resolvers/conversations.py too):
# the conversation row, then member rows, then inbox heads in user id order. The member rows are
# locked (FOR KEY SHARE, which a removal's DELETE waits for) so that membership holds until
# commit; and a member removed while this statement waited for the conversation is skipped,
# although its snapshot is older. $1 conversation, $2 sender, $3 clientId, $4 body, $5 sent at,
# $6 sending device, $7 and $8 the replied-to message and its sender (NULL when not a reply); with
# $9 the ciphertext (NULL but in an encrypted conversation); with attachments also $10 their metadata
# (JSON) and $11 their ids; with mentions then the mentioned user ids (distinct, not the sender), as
# the next parameter. Content of the wrong kind for the conversation (a body where it is encrypted,
# ciphertext where it is not: resolvers/encryption.py) is a refusal of `verdict` too.
#
# Moderation (resolvers/moderation.py) is decided here too, before anything is stored: `verdict`
# names why not ('frozen', 'silenced', 'admins_only', 'slow_mode') and until when. Every send
# takes the conversation row first, so sends of one conversation run one after another; the
# conversation's rules are read from that locked (hence current) row. A KEY SHARE lock yields
# the snapshot's version of a row another send changed meanwhile, so in slow mode `paced` locks
# the sender's row FOR NO KEY UPDATE, which reads the version the previous send committed; only
# then (and only for a MEMBER) is `last_sent_at` written, in `engaged`.
_SEND = """
WITH conv AS (
    -- only a member (as of the snapshot) may lock the conversation; the member CTE then decides
    SELECT c.id, c.kind, c.disappear_after_seconds, c.only_admins_send, c.slow_mode_seconds, c.frozen_at,
           c.encrypted
    FROM conversations c
    WHERE c.id = $1 AND EXISTS (SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2)
    FOR NO KEY UPDATE OF c
),
device AS (
    SELECT 1 FROM devices WHERE id = $6 AND user_id = $2
),
member AS (
    SELECT m.role, m.silenced, m.silenced_until FROM members m
    WHERE m.conversation_id = $1 AND m.user_id = $2 AND EXISTS (SELECT 1 FROM conv)
    FOR KEY SHARE OF m
),
paced AS (
    -- empty (no scan, no lock) unless slow mode is on
    SELECT m.last_sent_at, m.engaged FROM members m
    WHERE m.conversation_id = $1 AND m.user_id = $2 AND m.role = 'MEMBER'
      AND (SELECT slow_mode_seconds FROM conv) IS NOT NULL AND EXISTS (SELECT 1 FROM member)
    FOR NO KEY UPDATE OF m
),
verdict AS (
    SELECT CASE
               WHEN c.encrypted AND ($4::text IS NOT NULL OR $9::text IS NULL) THEN 'needs_ciphertext'
               WHEN NOT c.encrypted AND $9::text IS NOT NULL THEN 'refuses_ciphertext'
               WHEN c.frozen_at IS NOT NULL THEN 'frozen'
               WHEN m.silenced AND (m.silenced_until IS NULL OR m.silenced_until > $5) THEN 'silenced'
               WHEN c.only_admins_send AND m.role = 'MEMBER' THEN 'admins_only'
               WHEN p.last_sent_at > $5 - make_interval(secs => c.slow_mode_seconds) THEN 'slow_mode'
           END AS refusal,
           CASE
               WHEN m.silenced AND (m.silenced_until IS NULL OR m.silenced_until > $5) THEN m.silenced_until
               -- a concurrent send may have stored a time a moment after this one's
               ELSE LEAST(p.last_sent_at, $5) + make_interval(secs => c.slow_mode_seconds)
           END AS refused_until
    FROM conv c CROSS JOIN member m LEFT JOIN paced p ON true
),{files}{mentioned}
sent_key AS (
    INSERT INTO sent_keys (sender_id, client_id, message_id, conversation_id, sent_at)
    SELECT $2, $3, nextval('messages_id_seq'), $1, $5 FROM member
    WHERE EXISTS (SELECT 1 FROM device) AND (SELECT refusal FROM verdict) IS NULL{all_files}{all_mentioned}
    ON CONFLICT DO NOTHING
    RETURNING message_id
),
message AS (
    INSERT INTO messages (id, conversation_id, sender_id, client_id, body, sent_at, reply_to_id, reply_to_sender_id,
                          ciphertext, expires_at{metadata_column}{mention_column})
    -- a disappearing conversation's timer as of this send, read under the conversation's lock
    SELECT message_id, $1, $2, $3, $4, $5, $7, $8, $9,
           $5 + make_interval(secs => (SELECT disappear_after_seconds FROM conv)){metadata}{mention_list} FROM sent_key
    RETURNING id, expires_at
),{claimed}
recipients AS (
    SELECT m.user_id, m.muted, m.muted_until FROM members m
    WHERE m.conversation_id = $1 AND EXISTS (SELECT 1 FROM message)
      -- the sender's own inbox only when another of their devices needs the message
      AND (m.user_id <> $2 OR EXISTS (SELECT 1 FROM devices d WHERE d.user_id = $2 AND d.id <> $6))
      -- in a direct conversation, nothing reaches a member who blocked the sender (it stays SENT)
      AND NOT EXISTS (
          SELECT 1 FROM blocks b, conv
          WHERE conv.kind = 'DIRECT' AND b.blocker_id = m.user_id AND b.blocked_id = $2
      )
    ORDER BY m.user_id
    FOR KEY SHARE OF m
),
engaged AS (
    -- From the sender's first message here their presence shows to its members
    -- (resolvers/privacy.py); later sends find the row engaged and write nothing, unless slow
    -- mode (`paced`) has this send's time recorded. The counts order the writes: this runs
    -- after `recipients` has locked the member rows (a row this statement had already updated,
    -- it would skip) and before `locked` takes any head.
    UPDATE members m SET engaged = true,
                         last_sent_at = CASE WHEN EXISTS (SELECT 1 FROM paced) THEN $5 ELSE m.last_sent_at END
    WHERE m.conversation_id = $1 AND m.user_id = $2 AND (NOT m.engaged OR EXISTS (SELECT 1 FROM paced))
      AND EXISTS (SELECT 1 FROM message) AND (SELECT count(*) FROM recipients) >= 0
    -- `paced` read the row as locked: engaged before this send or not
    RETURNING NOT COALESCE((SELECT engaged FROM paced), false) AS newly
),
counted AS (
    -- Badges: every recipient but the sender has one more unread message here (and one more
    -- mention when named), and un-archives the conversation. Never the sender's row, which
    -- `engaged` may have updated: of two updates of one row in one statement only one takes
    -- effect. After `engaged` and before `locked`, by the same counts. A markRead holding a
    -- row makes this wait, then add to what it recounted (resolvers/unread.py).
    UPDATE members m SET unread_count = m.unread_count + 1, archived = false{mention_count}
    FROM recipients r
    WHERE m.conversation_id = $1 AND m.user_id = r.user_id AND r.user_id <> $2
      AND (SELECT count(*) FROM engaged) >= 0
    RETURNING m.user_id
),{mention_rows}
locked AS (
    SELECT h.user_id FROM inbox_heads h JOIN recipients r ON r.user_id = h.user_id
    WHERE (SELECT count(*) FROM counted) >= 0
    ORDER BY h.user_id FOR UPDATE OF h
),
heads AS (
    UPDATE inbox_heads h SET last_seq = h.last_seq + 1 FROM locked
    WHERE h.user_id = locked.user_id
    RETURNING h.user_id, h.last_seq
),
entries AS (
    INSERT INTO inbox_entries (user_id, seq, kind, message_id, payload, created_at)
    SELECT heads.user_id, heads.last_seq, 'MESSAGE', message.id, NULL, $5 FROM heads, message
),
touched AS (
    UPDATE conversations SET last_activity_at = $5
    WHERE id = $1 AND last_activity_at < $5 AND EXISTS (SELECT 1 FROM message)
)
SELECT EXISTS (SELECT 1 FROM member) AS is_member,
       EXISTS (SELECT 1 FROM device) AS device_known,
       (SELECT id FROM message) AS message_id,
       (SELECT expires_at FROM message) AS expires_at,
       u.username, u.display_name,
       (SELECT array_agg(user_id ORDER BY user_id) FROM heads) AS users,
       (SELECT array_agg(last_seq ORDER BY user_id) FROM heads) AS seqs,
       -- whether a push job is worth queueing (resolvers/messages.py): the worker checks the rest
       EXISTS (
           SELECT 1 FROM recipients r JOIN push_registrations p ON p.user_id = r.user_id
           WHERE r.user_id <> $2
             AND ((NOT r.muted AND (r.muted_until IS NULL OR r.muted_until <= $5)){mention_push})
       ) AS may_push,
       {files_ok} AS files_ok,
       {mentions_ok} AS mentions_ok,
       EXISTS (SELECT 1 FROM engaged WHERE newly) AS newly_engaged,
       (SELECT refusal FROM verdict) AS refusal,
       (SELECT refused_until FROM verdict) AS refused_until
FROM users u WHERE u.id = $2
"""

_NO_FILES = {"files": "", "all_files": "", "metadata_column": "", "metadata": "", "claimed": "", "files_ok": "true"}
_NO_MENTIONS = {
    "mentioned": "",
    "all_mentioned": "",
    "mention_column": "",
    "mention_list": "",
    "mention_count": "",
    "mention_rows": "",
    "mention_push": "",
    "mentions_ok": "true",
}


# A send with mentions ($M: their parameter): stored only when every one is a member (locked in
# the member rows' order), counted in the recipients' rows, and pushed even where muted unless the
# user turned that off (users.push_mentions_when_muted).
_MENTIONS = {
    "mentioned": """
mentioned AS (
    SELECT m.user_id FROM members m
    WHERE m.conversation_id = $1 AND m.user_id = ANY($M::bigint[]) AND EXISTS (SELECT 1 FROM member)
    ORDER BY m.user_id FOR KEY SHARE OF m
),""",
    "all_mentioned": "\n      AND (SELECT count(*) FROM mentioned) = cardinality($M::bigint[])",
    "mention_column": ", mentions",
    "mention_list": ", (SELECT json_agg(user_id ORDER BY user_id)::text FROM mentioned)",
    "mention_count": ", unread_mentions = m.unread_mentions + (m.user_id = ANY($M::bigint[]))::int",
    # only for those the message reaches (not a blocker): markRead recounts from these rows
    "mention_rows": """
mention_rows AS (
    INSERT INTO mentions (user_id, conversation_id, message_id, sent_at)
    SELECT r.user_id, $1, message.id, $5 FROM recipients r, message
    WHERE r.user_id = ANY($M::bigint[]) AND r.user_id <> $2
),""",
    "mention_push": """
                  OR (r.user_id = ANY($M::bigint[])
                      AND EXISTS (SELECT 1 FROM users mu WHERE mu.id = r.user_id AND mu.push_mentions_when_muted))""",
    "mentions_ok": "(SELECT count(*) FROM mentioned) = cardinality($M::bigint[])",
}


def _mentions(parameter: str) -> dict[str, str]:
    """The mention parts of a send whose mentioned ids are `parameter` ("$9")."""
    return {name: part.replace("$M", parameter) for name, part in _MENTIONS.items()}


SEND = _SEND.format(**_NO_FILES, **_NO_MENTIONS)
SEND_WITH_MENTIONS = _SEND.format(**_NO_FILES, **_mentions("$10"))

# A send with attachments claims them in the same statement: the uploads are locked after the
# conversation and its members (the one lock order), and the message is stored only when every
# one is the sender's, checked (READY) and in no other message; otherwise nothing is.
_WITH_FILES = {
    "files": """
files AS (
    SELECT a.id FROM attachments a
    WHERE a.id = ANY($11::bigint[]) AND a.uploader_id = $2 AND a.state = 'READY' AND a.message_id IS NULL
      -- opaque uploads (client-encrypted) go to an encrypted conversation, and only there
      AND a.opaque = (SELECT encrypted FROM conv) AND EXISTS (SELECT 1 FROM member)
    ORDER BY a.id FOR UPDATE OF a
),""",
    "all_files": "\n      AND (SELECT count(*) FROM files) = cardinality($11::bigint[])",
    "metadata_column": ", attachments",
    "metadata": ", $10",
    "claimed": """
claimed AS (
    UPDATE attachments a SET message_id = message.id, conversation_id = $1
    FROM message WHERE a.id IN (SELECT id FROM files)
),""",
    "files_ok": "(SELECT count(*) FROM files) = cardinality($11::bigint[])",
}
SEND_WITH_FILES = _SEND.format(**_WITH_FILES, **_NO_MENTIONS)
SEND_WITH_FILES_AND_MENTIONS = _SEND.format(**_WITH_FILES, **_mentions("$12"))

EARLIER_SEND = """
SELECT k.message_id, k.conversation_id, k.sent_at,
       m.id AS stored_id, m.client_id, m.body, m.attachments, m.sent_at AS stored_at, u.username, u.display_name,
       m.reply_to_id, m.reply_to_sender_id, m.expires_at, m.mentions, m.ciphertext,
       (SELECT array_agg(e.user_id ORDER BY e.user_id) FROM inbox_entries e WHERE e.message_id = m.id) AS users,
       (SELECT array_agg(e.seq ORDER BY e.user_id) FROM inbox_entries e WHERE e.message_id = m.id) AS seqs
FROM sent_keys k
-- a message deleted for everyone reads as gone: a retry must not announce it again
LEFT JOIN messages m ON m.id = k.message_id AND m.deleted_at IS NULL
LEFT JOIN users u ON u.id = k.sender_id
WHERE k.sender_id = $1 AND k.client_id = $2
"""

# Many acknowledgements in one statement. $1 devices, $2 their users, $3 positions (one per
# device), $4 receipt time (ISO text, as every payload stores it), $5 the same as a timestamp.
ACKNOWLEDGE_MANY = """
WITH request AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS r(device_id, user_id, seq)
),
devices_locked AS (
    -- every device of the users concerned, in id order: acknowledgements of one user serialize
    -- here, so the prune floor below comes from current positions, never stale ones
    SELECT d.id, d.user_id, d.acked_seq FROM devices d
    WHERE d.user_id IN (SELECT user_id FROM request) ORDER BY d.id FOR UPDATE
),
known AS (
    SELECT r.device_id, r.user_id, r.seq, dl.acked_seq AS old, h.last_seq AS head
    FROM request r
    JOIN devices_locked dl ON dl.id = r.device_id AND dl.user_id = r.user_id
    JOIN inbox_heads h ON h.user_id = r.user_id
),
moved AS (
    UPDATE devices d SET acked_seq = k.seq FROM known k
    WHERE d.id = k.device_id AND k.seq > k.old AND k.seq <= k.head
    RETURNING k.device_id, k.user_id, k.old, k.seq
),
covered AS (
    SELECT mv.user_id AS reader_id, m.conversation_id, m.sender_id, max(m.id) AS message_id
    FROM moved mv
    JOIN inbox_entries e ON e.user_id = mv.user_id AND e.seq > mv.old AND e.seq <= mv.seq
    JOIN messages m ON m.id = e.message_id
    WHERE m.sender_id <> mv.user_id
    GROUP BY mv.user_id, m.conversation_id, m.sender_id
),
marks AS (
    INSERT INTO receipt_watermarks AS w (conversation_id, sender_id, reader_id, delivered_upto, read_upto)
    SELECT conversation_id, sender_id, reader_id, message_id, 0 FROM covered
    ON CONFLICT (conversation_id, sender_id, reader_id) DO UPDATE SET delivered_upto = EXCLUDED.delivered_upto
    WHERE w.delivered_upto < EXCLUDED.delivered_upto
    RETURNING w.conversation_id, w.sender_id, w.reader_id, w.delivered_upto
),
per_sender AS (SELECT sender_id, count(*) AS n FROM marks GROUP BY sender_id),
sender_locked AS (
    SELECT h.user_id, p.n FROM inbox_heads h JOIN per_sender p ON p.sender_id = h.user_id
    ORDER BY h.user_id FOR UPDATE OF h
),
sender_heads AS (
    UPDATE inbox_heads h SET last_seq = h.last_seq + s.n FROM sender_locked s
    WHERE h.user_id = s.user_id
    RETURNING h.user_id, h.last_seq - s.n AS base
),
receipts AS (
    SELECT k.sender_id, k.reader_id,
           sh.base + row_number() OVER (PARTITION BY k.sender_id ORDER BY k.reader_id, k.conversation_id) AS seq,
           json_build_object(
               'conversation_id', k.conversation_id, 'message', k.delivered_upto, 'sender_id', k.sender_id,
               'reader_id', k.reader_id, 'reader_username', r.username, 'reader_display_name', r.display_name,
               'status', 'DELIVERED', 'at', $4::text
           )::text AS payload
    FROM marks k JOIN sender_heads sh ON sh.user_id = k.sender_id JOIN users r ON r.id = k.reader_id
),
appended AS (
    INSERT INTO inbox_entries (user_id, seq, kind, message_id, payload, created_at)
    SELECT sender_id, seq, 'RECEIPT', NULL, payload, $5 FROM receipts
),
floors AS (
    SELECT dl.user_id, min(COALESCE(mv.seq, dl.acked_seq)) AS upto
    FROM devices_locked dl LEFT JOIN moved mv ON mv.device_id = dl.id
    WHERE dl.user_id IN (SELECT user_id FROM moved)
    GROUP BY dl.user_id
),
pruned AS (
    DELETE FROM inbox_entries e USING floors f WHERE e.user_id = f.user_id AND e.seq <= f.upto
    RETURNING e.message_id
)
SELECT (SELECT array_agg(device_id ORDER BY device_id) FROM known) AS devices,
       (SELECT array_agg(old ORDER BY device_id) FROM known) AS olds,
       (SELECT array_agg(head ORDER BY device_id) FROM known) AS heads,
       (SELECT array_agg(sender_id ORDER BY sender_id, seq) FROM receipts) AS receipt_users,
       (SELECT array_agg(reader_id ORDER BY sender_id, seq) FROM receipts) AS receipt_readers,
       (SELECT array_agg(seq ORDER BY sender_id, seq) FROM receipts) AS receipt_seqs,
       (SELECT array_agg(payload ORDER BY sender_id, seq) FROM receipts) AS receipt_payloads,
       (SELECT array_agg(DISTINCT message_id) FROM pruned WHERE message_id IS NOT NULL) AS pruned
"""

DELETE_ORPHANS = """
DELETE FROM messages m
WHERE m.id = ANY($1::bigint[]) AND NOT EXISTS (SELECT 1 FROM inbox_entries e WHERE e.message_id = m.id)
"""

POSITIONS = """
SELECT d.acked_seq, h.last_seq FROM devices d JOIN inbox_heads h ON h.user_id = d.user_id WHERE d.id = $1
"""

READ_AFTER = """
SELECT e.seq, e.kind, e.payload, e.device_id,
       m.id, m.conversation_id, m.sender_id, m.client_id, m.body, m.attachments, m.sent_at, u.username,
       u.display_name, m.reply_to_id, m.reply_to_sender_id, m.expires_at, m.mentions, m.ciphertext
FROM inbox_entries e
-- a message deleted for everyone before delivery is never shown: its entry reads as empty
LEFT JOIN messages m ON m.id = e.message_id AND m.deleted_at IS NULL
LEFT JOIN users u ON u.id = m.sender_id
WHERE e.user_id = $1 AND e.seq > $2 AND EXISTS (SELECT 1 FROM devices WHERE id = $3)
  -- an entry for another device of the user (a to-device message) is not this device's
  AND (e.device_id IS NULL OR e.device_id = $3)
ORDER BY e.seq
LIMIT $4
"""

# $1 the hash of a bearer token, $2 now, $3 record activity only if last recorded before this.
SESSION_DEVICE = """
WITH found AS (
    -- A suspended (or deleted) account's devices stay, but their tokens are refused.
    SELECT d.id, d.user_id, d.last_active_at FROM devices d JOIN users u ON u.id = d.user_id
    WHERE d.token_hash = $1 AND u.suspended_at IS NULL AND u.deleted_at IS NULL
),
touched AS (
    UPDATE devices d SET last_active_at = $2 FROM found WHERE d.id = found.id AND found.last_active_at < $3
)
SELECT id, user_id FROM found
"""

DEVICE_EXISTS = "SELECT EXISTS (SELECT 1 FROM devices WHERE id = $1)"


async def _no_reset(_connection: asyncpg.Connection) -> None:
    """Skips asyncpg's reset query on release (~80 µs): these statements leave no session state."""


class PgInboxStore:
    """`InboxStore` on asyncpg with prepared statements (asyncpg caches them per connection)."""

    def __init__(self, pool: asyncpg.Pool, *, attempts: int = 5, pool_timeout: float | None = None) -> None:
        self._pool = pool
        self._attempts = attempts
        self._pool_timeout = pool_timeout
        # Acknowledgements are as frequent as messages and tiny: group-commit them.
        self._acks: Coalescer[_Ack, AckOutcome] = Coalescer(
            self._acknowledge_many, max_batch=200, key=lambda ack: ack.device_id
        )

    @classmethod
    async def connect(
        cls, url: str, *, max_size: int = 10, pool_timeout: float = 30.0, connect_timeout: float = 60.0
    ) -> PgInboxStore:
        """A store with its own pool, for a SQLAlchemy-style `postgresql+asyncpg://` URL naming one server or several.

        An operation waits at most `pool_timeout` seconds for a pooled connection and
        `connect_timeout` for a new one, then answers UNAVAILABLE.
        """
        dsn = asyncpg_dsn(url)  # every server of a multi-host URL, so that a promoted standby is found
        # No connection at start: the service comes up (and says UNAVAILABLE) while PostgreSQL is down.
        pool = await asyncpg.create_pool(dsn, min_size=0, max_size=max_size, reset=_no_reset, timeout=connect_timeout)
        return cls(pool, pool_timeout=pool_timeout)

    async def close(self) -> None:
        """Closes the pool."""
        await self._pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        """The connection pool, read by the metrics sampler (infra/metrics_sampler.py)."""
        return self._pool

    async def _run(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Runs `work` on a pooled connection; retries deadlocks and one lost connection."""
        for attempt in range(1, self._attempts + 1):
            try:
                async with self._pool.acquire(timeout=self._pool_timeout) as connection:
                    return await work(connection)
            except TimeoutError as error:
                # Every connection stayed busy, or a new one did not open, for the whole wait.
                raise StoreUnavailable("PostgreSQL did not answer in time") from error
            except _RETRYABLE:
                if attempt == self._attempts:
                    raise
                await asyncio.sleep(0.001 * attempt)
            except _CONNECTION_LOST as error:
                if isinstance(error, asyncpg.exceptions.ReadOnlySQLTransactionError):
                    await self._pool.expire_connections()  # all may lead to that server: reconnect each
                if attempt >= 2:
                    raise StoreUnavailable(f"PostgreSQL is unavailable: {error}") from error
                log.warning("lost a PostgreSQL connection (%s); trying again", error)
        raise AssertionError("unreachable")

    async def device_for_token(
        self, token_hash: str, *, now: datetime, touch_before: datetime
    ) -> tuple[int, int] | None:
        """The (device, user) a token names, recording activity at most once per interval; one statement."""
        row = await self._run(lambda c: c.fetchrow(SESSION_DEVICE, token_hash, now, touch_before))
        return None if row is None else (row["id"], row["user_id"])

    async def send(
        self,
        *,
        sender_id: int,
        device_id: int,
        conversation_id: int,
        client_id: str,
        body: str | None,
        sent_at: datetime,
        attachments: AttachmentClaim | None = None,
        reply_to: tuple[int, int] | None = None,
        mentions: Sequence[int] = (),
        ciphertext: str | None = None,
    ) -> SendOutcome:
        """Stores the message, its idempotency key and one inbox entry per recipient, in one statement."""
        reply_id, reply_sender = reply_to if reply_to is not None else (None, None)
        args: tuple[Any, ...] = (
            conversation_id,
            sender_id,
            client_id,
            body,
            sent_at,
            device_id,
            reply_id,
            reply_sender,
            ciphertext,
        )
        statement = SEND
        if attachments is not None:
            statement = SEND_WITH_FILES
            args = (*args, attachments.metadata, attachments.ids)
        if mentions:  # a variant of its own: a send without any pays nothing for them
            statement = SEND_WITH_FILES_AND_MENTIONS if attachments is not None else SEND_WITH_MENTIONS
            args = (*args, list(mentions))
        row = await self._run(lambda c: c.fetchrow(statement, *args))
        if row is None:  # the sender's account is gone
            return SendOutcome(is_member=False, message=None, device_known=False)
        if not row["device_known"]:
            return SendOutcome(is_member=bool(row["is_member"]), message=None, device_known=False)
        if row["message_id"] is None:
            return SendOutcome(
                is_member=bool(row["is_member"]),
                message=None,
                attachments_ok=bool(row["files_ok"]),
                mentions_ok=bool(row["mentions_ok"]),
                refusal=row["refusal"],
                refused_until=row["refused_until"],
            )
        message = StoredMessage(
            id=row["message_id"],
            conversation_id=conversation_id,
            sender_id=sender_id,
            sender_username=row["username"],
            sender_display_name=row["display_name"],
            client_id=client_id,
            body=body,
            sent_at=sent_at,
            attachments=attachments.metadata if attachments is not None else None,
            reply_to_id=reply_id,
            reply_to_sender_id=reply_sender,
            expires_at=row["expires_at"],
            mentions=tuple(sorted(mentions)),
            ciphertext=ciphertext,
        )
        appended = list(zip(row["users"] or (), row["seqs"] or (), strict=True))
        return SendOutcome(
            is_member=True,
            message=message,
            appended=appended,
            may_push=bool(row["may_push"]),
            newly_engaged=bool(row["newly_engaged"]),
        )

    async def earlier_send(self, sender_id: int, client_id: str) -> EarlierSend | None:
        """The first send with this clientId, if any."""
        row = await self._run(lambda c: c.fetchrow(EARLIER_SEND, sender_id, client_id))
        if row is None:
            return None
        message = None
        if row["stored_id"] is not None:
            message = StoredMessage.from_row(
                row, message_id=row["stored_id"], sender_id=sender_id, sent_at=row["stored_at"]
            )
        appended = list(zip(row["users"] or (), row["seqs"] or (), strict=True))
        return EarlierSend(row["message_id"], row["conversation_id"], row["sent_at"], message, appended)

    async def acknowledge(self, *, user_id: int, device_id: int, seq: int, at: datetime) -> AckOutcome:
        """Advances the device, raises DELIVERED watermarks and prunes; batched with concurrent calls."""
        return await self._acks.submit(_Ack(device_id, user_id, seq, at))

    async def _acknowledge_many(self, acks: list[_Ack]) -> list[AckOutcome]:
        """One statement for a batch of acknowledgements (of distinct devices), then the orphan check."""
        at = max(ack.at for ack in acks)
        row = await self._run(
            lambda c: c.fetchrow(
                ACKNOWLEDGE_MANY,
                [a.device_id for a in acks],
                [a.user_id for a in acks],
                [a.seq for a in acks],
                at.isoformat(),
                at,
            )
        )
        assert row is not None
        found = {
            device: (old, head)
            for device, old, head in zip(row["devices"] or (), row["olds"] or (), row["heads"] or (), strict=True)
        }
        # Each receipt goes back to the first acknowledgement of its reader, which announces it.
        receipts: dict[int, list[tuple[int, int, str]]] = {}
        for sender, reader, seq, payload in zip(
            row["receipt_users"] or (),
            row["receipt_readers"] or (),
            row["receipt_seqs"] or (),
            row["receipt_payloads"] or (),
            strict=True,
        ):
            receipts.setdefault(reader, []).append((sender, seq, payload))
        # After the commit, so that of two readers pruning one group message at once, the later sees both deletions.
        await self.delete_orphans(list(row["pruned"] or ()))
        outcomes = []
        for ack in acks:
            old, head = found.get(ack.device_id, (None, 0))
            mine = receipts.pop(ack.user_id, []) if old is not None else []
            outcomes.append(AckOutcome(acked_before=old, head=head, receipts=mine, pruned_messages=[]))
        return outcomes

    async def delete_orphans(self, message_ids: Sequence[int]) -> int:
        """Deletes those messages no entry refers to any more."""
        if not message_ids:
            return 0
        status = await self._run(lambda c: c.execute(DELETE_ORPHANS, list(message_ids)))
        return int(status.rsplit(" ", 1)[-1])

    async def positions(self, device_id: int) -> tuple[int, int] | None:
        """The device's acknowledged position and its user's head; None when the device is gone."""
        row = await self._run(lambda c: c.fetchrow(POSITIONS, device_id))
        return None if row is None else (row[0], row[1])

    async def read_after(self, *, user_id: int, device_id: int, after: int, limit: int) -> list[StoredEntry] | None:
        """Entries after `after`, oldest first; None when the device is gone."""

        async def work(connection: asyncpg.Connection) -> list[Any] | None:
            rows: list[Any] = await connection.fetch(READ_AFTER, user_id, after, device_id, limit)
            if not rows and not await connection.fetchval(DEVICE_EXISTS, device_id):
                return None
            return rows

        rows = await self._run(work)
        if rows is None:
            return None
        return [
            StoredEntry(
                seq=row["seq"],
                kind=row["kind"],
                payload=row["payload"],
                device_id=row["device_id"],
                message=None
                if row["id"] is None
                else StoredMessage.from_row(
                    row, message_id=row["id"], sender_id=row["sender_id"], sent_at=row["sent_at"]
                ),
            )
            for row in rows
        ]
