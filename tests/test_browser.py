"""GraphiQL and the web chat in a real browser: Debian's Chromium, headless, driven by playwright-core.

The scripts in tests/browser/ run with Node against a real server: GraphiQL loads with every
request beyond this machine refused and runs a query and a subscription; two people chat
through the web chat at `/` and see each other's messages, ticks, typing and a picture, unread
badges raised and cleared (by opening, and by another device's read), highlighted mentions, a
third person joining a group by its invite link, and disappearing messages leaving the page at
expiry (the screenshot in the README is taken there). The committed built pages are what web/
builds today. A missing browser or missing npm packages
fail the test with what to install: these tests never skip and never download a browser.
Over plain HTTP: both pages load only from this origin, and production serves neither
unless enabled.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra.settings import Settings
from tests.support.servers import ThreadServer
from tests.support.settings import embedded_settings

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "tests" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "docs" / "web-chat.png"
WEB = ROOT / "web"
STATIC = ROOT / "infra" / "static"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    # Disappearing timers from 1 s, so the chat test sees a message leave the page at expiry.
    settings = embedded_settings(tmp_path_factory.mktemp("browser"), disappearing_min_seconds=1)
    with ThreadServer(settings) as running:
        yield running


def _run(script: str, server: ThreadServer, **env: str) -> str:
    """Runs tests/browser/`script` with Node against `server`; fails with its output unless it succeeds."""
    node = shutil.which("node")
    assert node, "Node is missing: apt-get install nodejs npm"
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install chromium (scripts/check installs it)"
    assert (SCRIPTS / "node_modules" / "playwright-core").is_dir(), (
        "playwright-core is missing: run `tests/browser/install` (scripts/check runs it)"
    )
    result = subprocess.run(
        [node, script],
        cwd=SCRIPTS,
        env={**os.environ, "PARLEY_URL": server.url, "CHROMIUM": str(CHROMIUM), **env},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_graphiql_works_offline_with_a_query_and_a_subscription(server: ThreadServer) -> None:
    assert "a query and a subscription ran" in _run("graphiql.mjs", server)


def test_two_people_chat_in_the_web_chat_with_ticks_typing_and_a_picture(server: ThreadServer) -> None:
    """The chat's features work in a real browser, as tests/browser/chat.mjs walks through them."""
    SCREENSHOT.parent.mkdir(exist_ok=True)
    assert "two users chatted" in _run("chat.mjs", server, SCREENSHOT=str(SCREENSHOT))
    assert SCREENSHOT.read_bytes().startswith(b"\x89PNG"), "the README's screenshot was taken"


async def test_the_pages_load_everything_from_this_origin(server: ThreadServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        graphiql = await http.get("/graphql", headers={"accept": "text/html"})
        chat = await http.get("/")
        assets = [
            await http.get(path) for path in re.findall(r'(?:src|href)="(/static/[^"]+)"', graphiql.text + chat.text)
        ]
    assert len(assets) == 4, "GraphiQL's and the chat's script and stylesheet"
    assert all(asset.status_code == 200 for asset in assets)
    for page in (graphiql, chat):
        assert page.status_code == 200
        assert not re.search(r'(?:src|href)="(?:https?:)?//', page.text), "nothing from another origin"
        policy = page.headers["content-security-policy"]
        assert "script-src 'self';" in policy, "only our own scripts run, none inline"
        assert "https:" not in policy
        assert "unsafe-eval" not in policy


def test_the_committed_pages_are_built_from_web(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "Node is missing: apt-get install nodejs npm"
    assert (WEB / "node_modules" / ".bin" / "esbuild").exists(), "run `web/install` (scripts/check runs it)"
    built = subprocess.run(
        [node, "build.mjs", str(tmp_path)], cwd=WEB, capture_output=True, text=True, timeout=120, check=False
    )
    assert built.returncode == 0, built.stderr
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(STATIC) for p in STATIC.rglob("*") if p.is_file())
    assert fresh == committed
    stale = [str(name) for name in fresh if (tmp_path / name).read_bytes() != (STATIC / name).read_bytes()]
    assert not stale, f"infra/static is stale ({', '.join(stale)}): run `cd web && npm run build` and commit it"


def test_the_web_chat_type_checks_against_the_generated_operation_types() -> None:
    node = shutil.which("node")
    assert node, "Node is missing: apt-get install nodejs npm"
    tsc = WEB / "node_modules" / "typescript" / "bin" / "tsc"
    assert tsc.exists(), "run `web/install` (scripts/check runs it)"
    checked = subprocess.run(
        [node, str(tsc), "--noEmit", "-p", "."], cwd=WEB, capture_output=True, text=True, timeout=120, check=False
    )
    assert checked.returncode == 0, f"web/ does not type-check against frontend_schema/generated:\n{checked.stdout}"


def test_production_serves_neither_page_unless_enabled(tmp_path: Path) -> None:
    (tmp_path / "off").mkdir()
    (tmp_path / "on").mkdir()

    def pages(settings: Settings) -> tuple[int, int, int]:
        with ThreadServer(settings) as running, httpx.Client(base_url=running.url) as http:
            return (
                http.get("/").status_code,
                http.get("/static/chat/chat.js").status_code,
                http.get("/static/graphiql/graphiql.js").status_code,
            )

    assert pages(embedded_settings(tmp_path / "off", env="production")) == (404, 404, 404)
    enabled = embedded_settings(tmp_path / "on", env="production", web_chat=True, graphiql=True)
    assert pages(enabled) == (200, 200, 200)
