"""Renders docs/settings.md from `Settings`, so each default and meaning is written once, in infra/settings.py.

`python -m infra.settings_reference > docs/settings.md`; tests/test_settings_reference.py fails when the page is stale.
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

import annotated_types
from pydantic.fields import FieldInfo

from infra.settings import Settings

COMMAND = "python -m infra.settings_reference > docs/settings.md"

# The first field of each group -> its heading; fields follow in the order they are declared.
GROUPS = {
    "env": "General",
    "shutdown_drain_seconds": "Operations",
    "max_group_members": "Limits",
    "login_max_failures": "Abuse protection",
    "device_inactivity_days": "Devices and presence",
    "s3_bucket": "File sharing",
    "push_vapid_private_key": "Push notifications",
    "webhooks": "Webhooks",
    "hook_before_send_url": "Before-send hook",
}

INTRO = f"""\
# Settings

Every setting is an environment variable `PARLEY_<NAME>`, read once when a process
starts. Lists are comma-separated; durations and sizes are in the unit their name ends
with. "unset" means the variable is not set; what that means is in the last column.

This page is generated from the fields of `Settings` in `infra/settings.py` (their
docstrings, defaults and bounds): change a setting there, then run

```sh
{COMMAND}
```

`tests/test_settings_reference.py` fails while this page is stale.
"""

HEADER = "| variable | default | allowed | meaning |\n|---|---|---|---|\n"


def env_name(name: str) -> str:
    """The environment variable of a field."""
    return f"{Settings.model_config.get('env_prefix', '')}{name}".upper()


def render_default(value: object) -> str:
    """A default as an operator would write it: unset, lower-case booleans, lists comma-separated."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return ", ".join(f"`{item}`" for item in value) if value else "empty"
    return f"`{value}`"


def render_allowed(field: FieldInfo) -> str:
    """The values a field accepts beyond its type: the choices of a `Literal`, or the bounds of a number."""
    choices = _choices(field.annotation)
    if choices:
        return ", ".join(f"`{choice}`" for choice in choices)
    bounds: dict[str, Any] = {}
    for constraint in field.metadata:
        if isinstance(constraint, annotated_types.Ge | annotated_types.Gt | annotated_types.Le | annotated_types.Lt):
            bounds.update(
                {key: getattr(constraint, key) for key in ("ge", "gt", "le", "lt") if hasattr(constraint, key)}
            )
        elif isinstance(constraint, annotated_types.BaseMetadata):
            raise TypeError(f"{field}: render the constraint {constraint!r} in infra/settings_reference.py")
    if "ge" in bounds and "le" in bounds:
        return f"{bounds['ge']}\N{EN DASH}{bounds['le']}"
    symbols = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    return ", ".join(f"{symbols[key]} {bounds[key]}" for key in symbols if key in bounds)


def _choices(annotation: object) -> list[str]:
    if get_origin(annotation) is Literal:
        return [str(arg) for arg in get_args(annotation)]
    return [choice for arg in get_args(annotation) for choice in _choices(arg)]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render() -> str:
    """The whole of docs/settings.md."""
    parts = [INTRO]
    for name, field in Settings.model_fields.items():
        if name in GROUPS:
            parts.append(f"\n## {GROUPS[name]}\n\n{HEADER}")
        default = field.get_default(call_default_factory=True, validated_data={})
        row = (f"`{env_name(name)}`", render_default(default), render_allowed(field), field.description or "")
        parts.append("| " + " | ".join(_cell(cell) for cell in row) + " |\n")
    return "".join(parts)


if __name__ == "__main__":
    print(render(), end="")
