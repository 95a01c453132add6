"""The exported schema is committed, current, and a superset of the contract but for what is listed."""

from __future__ import annotations

from pathlib import Path

from graphql import build_schema as parse_sdl
from graphql.utilities import find_breaking_changes

from graph.schema import build_schema

ROOT = Path(__file__).resolve().parent.parent
EXPORTED = ROOT / "frontend_schema" / "schema.graphql"
NOT_YET_BUILT = ROOT / "frontend_schema" / "not_yet_built.txt"
CONTRACT = ROOT.parent / "shared" / "contract" / "schema.graphql"


def test_exported_schema_is_current() -> None:
    assert EXPORTED.read_text() == build_schema().as_str() + "\n", (
        "frontend_schema/schema.graphql is stale: run `parley export-schema -o frontend_schema/schema.graphql`"
    )


def _listed() -> set[str]:
    lines = NOT_YET_BUILT.read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_schema_breaks_the_contract_only_where_listed() -> None:
    assert CONTRACT.exists(), f"the contract is expected at {CONTRACT}"
    breaking = find_breaking_changes(parse_sdl(CONTRACT.read_text()), parse_sdl(EXPORTED.read_text()))
    found = {f"{change.type.name}: {change.description}" for change in breaking}
    unlisted = found - _listed()
    assert not unlisted, f"breaking changes against the contract: {sorted(unlisted)}"
    stale = _listed() - found
    assert not stale, f"built already, remove from not_yet_built.txt: {sorted(stale)}"
