"""The Dagster UI in a real browser: Debian's headless Chromium opens the asset graph, an asset's checks and
the backfill page of `dagster dev` (shared with test_ui_backfill.py), saves screenshots under
test-artifacts/ and the test reads the rendered DOM.

Playwright's browser download cannot work here, so this launches the `chromium` executable that
scripts/bootstrap.sh installs, with --dump-dom and --screenshot after a virtual-time budget.
"""

from __future__ import annotations

import html
import re
import struct
import subprocess
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from mdpipeline_tests.ui_helpers import ARTIFACTS, LAYERS, PROVIDER, UI_END, UI_START, DagsterDev

pytest_plugins = ["mdpipeline_tests.ui_helpers"]

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
GROUPS = (*LAYERS, "reference")


def browse(url: str, name: str, window: tuple[int, int] = (1600, 1000)) -> list[str]:
    """Load `url` in headless Chromium; save test-artifacts/<name>.png and .html; return the page's text lines."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/bootstrap.sh (installs Debian's chromium package)")
    ARTIFACTS.mkdir(exist_ok=True)
    png, dom = ARTIFACTS / f"{name}.png", ARTIFACTS / f"{name}.html"
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="mdp-chromium-") as profile:
        out = subprocess.run(
            [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
             "--virtual-time-budget=15000", f"--screenshot={png}", "--dump-dom", url],
            capture_output=True, text=True, timeout=180, check=False)
    dom.write_text(out.stdout)
    assert out.returncode == 0, out.stderr[-2000:]
    assert png.exists(), out.stderr[-2000:]
    assert _png_size(png) == window
    assert png.stat().st_size > 20_000  # a rendered page, not a blank canvas
    body = re.sub(r"<(script|style)[^>]*>.*?</\1>", "", out.stdout, flags=re.S)
    return [html.unescape(t.strip()) for t in re.split(r"<[^>]+>", body) if t.strip()]


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG header."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_asset_graph_shows_each_step_with_kinds_and_checks(dagster_ui: DagsterDev, ui_backfill: dict[str, Any]
                                                           ) -> None:
    selection = urllib.parse.quote(f'key:"*/{PROVIDER}/bars_1d"', safe="")
    expanded = ",".join(f"global@global:{g}" for g in GROUPS)
    # Wide enough that the graph renders full asset nodes (status, checks, kinds) rather than bare names.
    url = f"{dagster_ui.url}/asset-groups~{selection}?expanded={expanded}"
    text = browse(url, "asset-graph", window=(2400, 1000))
    dom = (ARTIFACTS / "asset-graph.html").read_text()
    for layer in LAYERS:
        assert f"/assets/{layer}/{PROVIDER}/bars_1d" in dom, layer  # each node links to its asset
        assert layer in text  # group boxes
    assert text.count("bars_1d") >= len(LAYERS)
    assert "Asset checks" in text
    passed = [t for t in text if re.fullmatch(r"\d+ / \d+ Passed", t)]
    assert len(passed) >= 2, text  # check status on validated (schema, quarantine) and normalized nodes
    assert {"Python", "Postgres", "Polars", "Pandera", "Kafka"} <= set(text)  # kinds


def test_asset_checks_are_listed_by_name(dagster_ui: DagsterDev, ui_backfill: dict[str, Any]) -> None:
    text = browse(f"{dagster_ui.url}/assets/validated/{PROVIDER}/bars_1d?view=checks", "asset-checks")
    assert {"schema", "quarantine"} <= set(text)
    assert "Succeeded" in text


def test_asset_page_shows_owner_description_and_columns(dagster_ui: DagsterDev, ui_backfill: dict[str, Any]
                                                       ) -> None:
    text = browse(f"{dagster_ui.url}/assets/md/{PROVIDER}/bars_1d?view=overview", "asset-overview")
    joined = " ".join(text)
    assert "market-data" in text  # owner team:market-data
    assert "md.bars_1d" in joined  # description and table name
    assert {"instrument_id", "raw_payload_id", "run_id"} <= set(text)  # the column schema


def test_backfill_page_shows_the_completed_range(dagster_ui: DagsterDev, ui_backfill: dict[str, Any]) -> None:
    text = browse(f"{dagster_ui.url}/runs/b/{ui_backfill['id']}", "backfill")
    assert ui_backfill["id"] in " ".join(text)
    assert f"{UI_START.isoformat()}...{UI_END.isoformat()}" in text  # partition selection
    assert "Succeeded" in text
    for layer in LAYERS:
        assert f"{layer} / {PROVIDER} / bars_1d" in text
    assert text.count("100% completed") == len(LAYERS)
