"""The benchmark harness runs end to end at a tiny scale, so it cannot rot. Nothing here asserts speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {"direct", "fanout", "idle", "storm", "memory"}


@pytest.mark.timeout(240)
def test_every_scenario_runs_at_tiny_scale_without_losses_or_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout[-4000:]}\nstderr:\n{run.stderr[-4000:]}"

    results = json.loads((out / "results.json").read_text())
    assert set(results["scenarios"]) == SCENARIOS
    for scenario, by_target in results["scenarios"].items():
        # The echo server stores nothing, so it has no reconnect storm; everything else runs on both.
        expected = {"parley"} if scenario == "storm" else {"parley", "bare"}
        assert set(by_target) == expected, scenario
        for target, result in by_target.items():
            assert "error" not in result, (scenario, target, result)
            accounting = result["accounting"]
            assert accounting["losses"] == 0, (scenario, target, accounting)
            assert accounting["duplicates"] == 0, (scenario, target, accounting)
            assert accounting["misrouted"] == 0, (scenario, target, accounting)
    assert (
        results["scenarios"]["storm"]["parley"]["delivered"]
        == results["scenarios"]["storm"]["parley"]["events_expected"]
    )
    assert all(
        step["delivered"] == step["deliveries_expected"] for step in results["scenarios"]["direct"]["parley"]["steps"]
    )
    assert (out / "summary.md").read_text().startswith("# Parley benchmark")
    assert (out / "latency.png").read_bytes().startswith(b"\x89PNG")
