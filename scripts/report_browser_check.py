"""Opens evaluation reports in a real headless browser and checks what a quality engineer relies on.

Not a unit test of the HTML: the page is loaded by Chromium (Debian's `chromium`
package, driven by Playwright from PyPI; no browser download) at 1024 x 768
and checked from the browser's side:

- the identity header names the model's sha256 and the configuration;
- the table lists every image of `scores.jsonl` (or of the page's summary), and
  every panel it links loads as an image;
- clicking the score header sorts the rows by score, and the verdict and
  correct filters show only matching rows;
- the page is not wider than the window (no sideways scrolling at 1024 px).

It writes a full-page screenshot of each report and one of the panels of its
highest-scoring image (with the true and predicted outlines) into `--out`, and exits 1 when a check
fails, naming it.

Example:

    sudo apt-get install chromium        # once; Playwright uses it, downloads none
    python3 -m scripts.report_browser_check runs/demo/eval/report/index.html --out runs/screens
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

WIDTH, HEIGHT = 1024, 768
# Chromium in a closed network and as root (the project's machines): no sandbox, nothing in the background.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    """The path of an installed Chromium (Debian's `chromium` or a `chromium-browser`), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def expected_images(index: Path) -> int:
    """How many images the report should list: the lines of `../scores.jsonl`, or the page's own summary."""
    scores = index.parent.parent / "scores.jsonl"
    if scores.is_file():
        return sum(1 for line in scores.read_text().splitlines() if line.strip())
    match = re.search(r"<p>(\d+) test images", index.read_text())
    if match is None:
        raise ValueError(f"{index}: no scores.jsonl beside the report and no image count in the page")
    return int(match.group(1))


def check_report(page, index: Path, out: Path, name: str) -> list[str]:
    """Loads one report in `page`, runs the checks, saves the screenshots; returns the failed checks."""
    failed = []
    page.goto(index.resolve().as_uri())
    page.wait_for_load_state("load")

    identity = page.locator("table.identity").inner_text() if page.locator("table.identity").count() else ""
    for needed in ("sha256", "Configuration", "riad-tf"):
        if needed not in identity:
            failed.append(f"identity header lacks {needed!r}")

    rows = page.locator("#images tbody tr")
    expected = expected_images(index)
    if rows.count() != expected:
        failed.append(f"table lists {rows.count()} images, expected {expected}")
    broken = page.evaluate(
        """async () => {
            const links = [...document.querySelectorAll('#images a')].map(a => a.href);
            const bad = [];
            for (const href of links) {
                const img = new Image(); img.src = href;
                try { await img.decode(); } catch (e) { bad.push(href); }
            }
            return bad;
        }"""
    )
    if broken:
        failed.append(f"{len(broken)} linked panels do not load, e.g. {broken[0]}")

    page.locator("#images th", has_text="score").click()
    scores = [
        float(v)
        for v in page.eval_on_selector_all("#images tbody tr td:nth-child(4)", "c => c.map(x => x.dataset.value)")
    ]
    if scores != sorted(scores):
        failed.append("clicking the score header did not sort the rows by score")
    for key, value, column in (("verdict", "anomalous", 5), ("right", "no", 6)):
        control = page.locator(f'[data-filter="{key}"]')
        if control.locator(f'option[value="{value}"]').count() == 0:
            continue  # no such rows in this report
        control.select_option(value)
        visible = page.eval_on_selector_all(
            f"#images tbody tr:not([hidden]) td:nth-child({column})", "c => c.map(x => x.textContent)"
        )
        if not visible or set(visible) != {value}:
            failed.append(f"filter {key}={value} shows {sorted(set(visible))}")
        control.select_option("")

    wide = page.evaluate("() => document.documentElement.scrollWidth")
    if wide > WIDTH:
        failed.append(f"the page is {wide} px wide at a {WIDTH} px window")

    page.screenshot(path=str(out / f"{name}-page.png"), full_page=True)
    page.locator("#images th", has_text="score").click()  # now descending: the highest score first
    first_panel = page.locator("#images tbody tr a").first
    if first_panel.count():  # the highest-scoring image's panels, as a click on its name shows them
        page.goto(first_panel.evaluate("a => a.href"))
        page.screenshot(path=str(out / f"{name}-panel.png"))
    return failed


def run_checks(indexes: list[Path], out: Path, chromium: str) -> dict[str, list[str]]:
    """Every report's failed checks (empty lists when all pass)."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    results = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            for number, index in enumerate(indexes):
                results[str(index)] = check_report(page, index, out, f"report-{number}")
        finally:
            browser.close()
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="report index.html files")
    parser.add_argument("--out", type=Path, default=Path("runs/report-screens"), help="folder for the screenshots")
    parser.add_argument("--chromium", default=None, help="Chromium executable (default: found on PATH)")
    args = parser.parse_args(argv)
    chromium = args.chromium or find_chromium()
    if chromium is None:
        print("report_browser_check: no Chromium found; install Debian's chromium package", file=sys.stderr)
        return 2
    missing = [str(p) for p in args.reports if not p.is_file()]
    if missing:
        print(f"report_browser_check: {missing[0]}: no such report", file=sys.stderr)
        return 2
    results = run_checks(args.reports, args.out, chromium)
    print(json.dumps({"screenshots": str(args.out), "failed": results}, indent=2))
    return 1 if any(results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
