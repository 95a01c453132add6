"""Real JavaScript clients against a real server: graphql-ws, Apollo Client (split links,
multipart subscriptions over HttpLink, persisted queries), the legacy
subscriptions-transport-ws and graphql-sse.

Each scenario is a script in clients/node/ run with Node from the system's packages and the npm
packages pinned in clients/node/package-lock.json (`bash clients/node/install`, which
scripts/check runs). Without Node or those packages these tests fail, saying what to run: they
are never skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.helpers import Api

CLIENTS = Path(__file__).resolve().parent.parent / "clients" / "node"


@pytest.fixture(scope="module")
def node() -> str:
    """The `node` binary, with clients/node's packages installed from its lock file."""
    binary = shutil.which("node")
    if binary is None:
        pytest.fail("node is missing: apt-get install nodejs npm, then bash clients/node/install")
    stamp = CLIENTS / "node_modules" / ".installed-from-lock"
    wanted = hashlib.sha256((CLIENTS / "package-lock.json").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text().strip() != wanted:
        pytest.fail("clients/node's npm packages are missing or stale: run bash clients/node/install")
    return binary


async def run(node: str, script: str, api: Api) -> dict[str, Any]:
    """Runs one client scenario against the server; its summary line, or a failure with its output."""
    process = await asyncio.create_subprocess_exec(
        node,
        script,
        api.url,
        cwd=CLIENTS,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{script} did not finish within 60 s") from None
    assert process.returncode == 0, f"{script} failed:\n{err.decode()}\n{out.decode()}"
    summary: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return summary


async def test_graphql_ws_chat_with_receipts_and_replay_after_reconnect(node: str, api: Api) -> None:
    summary = await run(node, "graphql-ws.mjs", api)
    assert summary == {"delivered": True, "read": True, "replayed": ["while away 1", "while away 2"]}


async def test_apollo_client_split_links_multipart_subscriptions_and_persisted_queries(node: str, api: Api) -> None:
    summary = await run(node, "apollo.mjs", api)
    assert summary == {"delivered": True, "read": True, "replayed": "missed", "multipart": True, "apq": True}


async def test_legacy_subscriptions_transport_ws_client_receives_events(node: str, api: Api) -> None:
    assert await run(node, "legacy.mjs", api) == {"received": True}


async def test_graphql_sse_client_receives_events(node: str, api: Api) -> None:
    assert await run(node, "sse.mjs", api) == {"received": True}
