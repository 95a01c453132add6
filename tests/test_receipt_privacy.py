"""Read-receipt privacy: `setPrivacy(readReceipts: false)` withholds READ both ways in direct chats, not in groups."""

from __future__ import annotations

from tests.support.client import Json
from tests.support.helpers import Api, Person
from tests.support.streams import before_marker

PRIVACY = (
    "mutation P($h: Boolean, $r: Boolean) { setPrivacy(hideLastSeen: $h, readReceipts: $r) "
    "{ id hideLastSeen readReceipts } }"
)


def statuses(events: list[Json], message: Json) -> list[str]:
    """The statuses of the receipts among `events` that are about `message` (markers get receipts too)."""
    return [
        e["receipt"]["status"]
        for e in events
        if e["__typename"] == "ReceiptEvent" and e["receipt"]["messageId"] == message["id"]
    ]


async def delivered_and_read(reader: Person, conversation: str, message_id: str) -> None:
    """The reader's device receives everything pending (DELIVERED), then the reader marks the message read."""
    events = await reader.pending()
    await reader.acknowledge(events[-1]["cursor"])
    await reader.mark_read(conversation, message_id)


async def test_read_receipts_off_withholds_read_both_ways_in_direct_chats_only(api: Api) -> None:
    """Alice turns read receipts off: no READ from her nor to her in a direct chat; DELIVERED and groups unchanged."""
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    group = await alice.create_group(members=[bob])
    await alice.drain()
    await bob.drain()

    changed = await alice.data(PRIVACY, r=False)
    assert changed["setPrivacy"] == {"id": alice.user_id, "hideLastSeen": False, "readReceipts": False}
    assert (await alice.data("{ me { readReceipts hideLastSeen } }"))["me"] == {
        "readReceipts": False,
        "hideLastSeen": False,
    }
    theirs = await bob.data("query U($id: ID!) { user(id: $id) { readReceipts } }", id=alice.user_id)
    assert theirs["user"]["readReceipts"] is None, "someone else's setting is not bob's to read"
    assert await alice.error(PRIVACY) == "BAD_USER_INPUT"

    async with bob.events() as bob_stream, alice.events() as alice_stream:
        # Alice reads bob's direct message: bob sees it delivered, never read.
        to_alice = await bob.send(direct, "did you read this?")
        await delivered_and_read(alice, direct, to_alice["id"])
        assert statuses(await before_marker(bob_stream, alice, group), to_alice) == ["DELIVERED"]

        # Bob reads alice's direct message: alice, who hides hers, sees none of his either.
        to_bob = await alice.send(direct, "and this?")
        await delivered_and_read(bob, direct, to_bob["id"])
        assert statuses(await before_marker(alice_stream, bob, group), to_bob) == ["DELIVERED"]

        # In a group READ flows both ways.
        in_group = await bob.send(group, "group message")
        await delivered_and_read(alice, group, in_group["id"])
        assert statuses(await before_marker(bob_stream, alice, group), in_group) == ["DELIVERED", "READ"]
        from_alice = await alice.send(group, "group reply")
        await delivered_and_read(bob, group, from_alice["id"])
        assert statuses(await before_marker(alice_stream, bob, group), from_alice) == ["DELIVERED", "READ"]

        # Turned back on (hideLastSeen left as it is), the next read in the direct chat is seen.
        assert (await alice.data(PRIVACY, r=True))["setPrivacy"]["readReceipts"] is True
        again = await bob.send(direct, "now?")
        await delivered_and_read(alice, direct, again["id"])
        assert statuses(await before_marker(bob_stream, alice, group), again) == ["DELIVERED", "READ"]
