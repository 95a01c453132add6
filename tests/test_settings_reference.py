"""docs/settings.md is generated from `Settings` (issue 19: each default is written once)."""

from __future__ import annotations

from pathlib import Path

from infra.settings import Settings
from infra.settings_reference import COMMAND, GROUPS, render, render_allowed, render_default

DOC = Path(__file__).resolve().parent.parent / "docs" / "settings.md"


def test_docs_settings_md_is_generated_from_the_settings() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), f"docs/settings.md is stale: run `.venv/bin/{COMMAND}`"


def test_every_setting_has_a_docstring() -> None:
    missing = [name for name, field in Settings.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"give these fields of Settings a docstring (the string literal under the field): {missing}"


def test_every_group_heading_starts_at_a_setting() -> None:
    assert set(GROUPS) <= set(Settings.model_fields)
    assert next(iter(Settings.model_fields)) in GROUPS


def test_defaults_and_bounds_read_as_an_operator_writes_them() -> None:
    fields = Settings.model_fields
    assert [render_default(value) for value in (None, True, [], ["a", "b"], 1.5)] == [
        "unset",
        "`true`",
        "empty",
        "`a`, `b`",
        "`1.5`",
    ]
    assert render_allowed(fields["max_batch_operations"]) == "1\N{EN DASH}100"
    assert render_allowed(fields["max_aliases"]) == "≥ 1"
    assert render_allowed(fields["database_pool_timeout_seconds"]) == "> 0, ≤ 60"
    assert render_allowed(fields["persisted_queries"]) == "`off`, `auto`, `allowlist`"
    assert render_allowed(fields["env"]) == "`development`, `production`"
    assert render_allowed(fields["database_url"]) == ""
