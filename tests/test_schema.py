"""The exported schema is committed, current, and breaks the released API only where a reason is listed.

`frontend_schema/released/schema.graphql` is the API as last released; app teams' clients are
built against it. Like graphql-inspector's `diff` gate, a change that would break them (a type,
field, argument or enum value removed or made incompatible) fails here unless
`frontend_schema/breaking_changes.txt` lists it with the reason it is worth it.
"""

from __future__ import annotations

from pathlib import Path

from graphql import build_schema as parse_sdl
from graphql.utilities import find_breaking_changes

from graph.schema import build_schema

FRONTEND = Path(__file__).resolve().parent.parent / "frontend_schema"
EXPORTED = FRONTEND / "schema.graphql"
RELEASED = FRONTEND / "released" / "schema.graphql"
LISTED = FRONTEND / "breaking_changes.txt"


def test_exported_schema_is_current() -> None:
    assert EXPORTED.read_text() == build_schema().as_str() + "\n", (
        "frontend_schema/schema.graphql is stale: run `frontend_schema/refresh`"
    )


def _listed() -> dict[str, str]:
    """The listed breaking changes, each with its reason."""
    listed: dict[str, str] = {}
    for line in LISTED.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            change, _, reason = line.partition("|")
            listed[change.strip()] = reason.strip()
    return listed


def breaking_changes() -> set[str]:
    """What the exported schema breaks of the released one, as `CHANGE_TYPE: description`."""
    changes = find_breaking_changes(parse_sdl(RELEASED.read_text()), parse_sdl(EXPORTED.read_text()))
    return {f"{change.type.name}: {change.description}" for change in changes}


def test_schema_breaks_the_released_api_only_where_a_reason_is_listed() -> None:
    found, listed = breaking_changes(), _listed()
    unlisted = sorted(found - listed.keys())
    assert not unlisted, (
        "these changes break clients of the released API; undo them, or list each in "
        f"frontend_schema/breaking_changes.txt with its reason: {unlisted}"
    )
    assert all(listed.values()), "every listed breaking change needs a reason after `|`"
    stale = sorted(listed.keys() - found)
    assert not stale, f"no longer breaking, remove from frontend_schema/breaking_changes.txt: {stale}"


def test_the_check_catches_a_removed_field(tmp_path: Path) -> None:
    """The gate itself: a field removed from the exported schema is reported as breaking."""
    released = RELEASED.read_text()
    assert "  lastSeen: DateTime\n" in released
    exported = parse_sdl(released.replace("  lastSeen: DateTime\n", "", 1))
    changes = find_breaking_changes(parse_sdl(released), exported)
    assert [change.type.name for change in changes] == ["FIELD_REMOVED"]
