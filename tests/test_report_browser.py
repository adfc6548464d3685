"""The report pages in a real browser (headless Chromium, from file://): every player decodes its
audio, every picture loads, no console or resource error; and a screenshot of a run's page.

The page records what it saw in its hidden #selfcheck element once loaded (report.SELFCHECK);
``--dump-dom`` gives it back. Skipped, with the reason, where Chromium is not installed
(Debian: apt-get install chromium).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import make_generation, make_run

from fastsrnn.tools.report import write_report

BROWSER = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="chromium not installed: apt-get install chromium "
                                                         "to run the browser tests of fastsrnn report")


def browse(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    # --no-sandbox, --disable-dev-shm-usage: a CI container runs as root with a small /dev/shm.
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
           "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=8000",
           "--enable-logging=stderr", "--v=0",
           *extra, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def check_page(page: Path, profile: Path, n_audio: int, n_images: int) -> None:
    done = browse(page, profile, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    m = re.search(r'<pre id="selfcheck"[^>]*data-done="1"[^>]*>(.*?)</pre>', done.stdout, re.S)
    assert m, "the page's self-check did not finish:\n" + done.stdout[-2000:]
    seen = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert seen["errors"] == [], seen["errors"]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert not console, "console messages:\n" + "\n".join(console)
    assert len(seen["audio"]) == n_audio and len(seen["images"]) == n_images
    for a in seen["audio"]:
        assert a["error"] is None and a["readyState"] >= 1 and isinstance(a["duration"], (int, float)) \
            and a["duration"] > 0, a
    for i in seen["images"]:
        assert i["naturalWidth"] > 0, i


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_browser")
    return root, write_report(make_run(root), progress=False), write_report(make_generation(root), progress=False)


def test_run_page_loads_in_a_browser(pages):
    root, run_page, _ = pages
    check_page(run_page, root / "profile-run", n_audio=8, n_images=9)  # 8 clips + metrics.png


def test_generation_page_loads_in_a_browser(pages):
    root, _, gen_page = pages
    check_page(gen_page, root / "profile-gen", n_audio=2, n_images=2)  # FLAC sequences


def test_screenshot_of_a_run_page(pages, capsys):
    root, run_page, _ = pages
    shot = root / "report-screenshot.png"
    done = browse(run_page, root / "profile-shot", f"--screenshot={shot}", "--window-size=1200,2000",
                  "--hide-scrollbars")
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with capsys.disabled():
        print(f"\nscreenshot of the report page: {shot}")
