"""The HTML report in headless Chromium: it loads without console errors and shows every section.

Chromium is Debian's `chromium` (installed by .ci/run). Without it the test skips locally, but fails in CI
(CI=true): this check must never be skipped there."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from .assess_fixtures import demo_run  # noqa: F401
from .test_report_formats import PLOTS, SECTIONS, Collector

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("chromium is required in CI (.ci/run installs Debian's chromium)")
    pytest.skip("chromium is not installed")


def browse(page: Path, tmp_path: Path, *mode: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *mode, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def console_messages(stderr: str) -> list[str]:
    """Console messages Chromium logs with --enable-logging (errors, uncaught exceptions, console.* calls)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_console_detection_works(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    run = browse(bad, tmp_path, "--dump-dom")
    assert any("undefinedFunction" in m for m in console_messages(run.stderr)), run.stderr[-2000:]


@pytest.mark.parametrize("model", list(PLOTS))
def test_report_loads_without_console_errors_and_shows_every_section(demo_run, model, tmp_path):  # noqa: F811
    out, _, _ = demo_run
    run = browse(out / model / "report.html", tmp_path, "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    assert console_messages(run.stderr) == []
    dom = Collector()
    dom.feed(run.stdout)
    assert set(SECTIONS) <= dom.ids
    assert {f"plot-{p}" for p in PLOTS[model]} <= dom.ids


def test_report_renders_to_a_screenshot(demo_run, tmp_path):  # noqa: F811
    out, _, _ = demo_run
    shot = tmp_path / "shot.png"
    run = browse(out / "digits-cnn" / "report.html", tmp_path, f"--screenshot={shot}", "--window-size=1280,2000",
                 "--hide-scrollbars")
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (1280, 2000)
    assert shot.stat().st_size > 50_000  # a rendered page, not a blank one
