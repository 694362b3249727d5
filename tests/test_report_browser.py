"""The report as a browser sees it: Debian's chromium, headless, driven by Playwright.

Checks what a static parse cannot: every embedded image decodes in a real browser, the
page runs no script and asks the network for nothing, and it renders to a full-page
screenshot.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_sched.monitor.report import build_report

pytestmark = [pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Every plot: one run predicts (scatter and learner error drawn), tasks have deadlines.
EXPECTED_IMAGES = 9


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    from test_report import write_run  # the unit tests' builder of valid run folders

    root = tmp_path_factory.mktemp("runs")
    write_run(root / "fifo", "fifo", n=200)
    write_run(root / "ml", "ml", n=200, predictions=True)
    return build_report([root / "fifo", root / "ml"], root / "report.html",
                        title="fifo vs ml")


def test_report_renders_in_chromium_without_errors_or_network(browser, report, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, outside = [], []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("request", lambda r: outside.append(r.url)
            if not r.url.startswith(("file:", "data:")) else None)

    page.goto(report.resolve().as_uri(), wait_until="load")
    images = page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => ({done: i.complete, width: i.naturalWidth, "
               "height: i.naturalHeight, alt: i.alt}))")
    screenshot = tmp_path / "report.png"
    page.screenshot(path=str(screenshot), full_page=True)
    title = page.title()
    page.close()

    assert errors == []
    assert outside == []
    assert title == "fifo vs ml"
    assert len(images) == EXPECTED_IMAGES
    for image in images:
        assert image["done"] and image["width"] > 0, image
        assert image["width"] == 900, image  # drawn at the page's column width
    data = screenshot.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 100_000  # nine plots and two tables, not a blank page
