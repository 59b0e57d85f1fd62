"""The report in a real headless Chromium (Debian's package, driven by Playwright): scripts/report_browser_check.py.

`.ci/run` installs Chromium; a machine without it skips these tests with the
command that installs it.
"""

import re

import pytest

from riad_tf.report import write_report
from scripts.report_browser_check import find_chromium, run_checks
from tests.test_report import _calibrated, fake_evaluation, fake_metrics

pytest.importorskip("playwright", reason="Playwright is in the [dev] extra: pip install -e .[dev]")
CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium (as .ci/run does)")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    data = fake_evaluation()
    data["scores"][0] = 0.9  # a good image called anomalous: a wrong row to filter
    identity = {"Model": "model.keras, sha256 " + "0" * 64, "riad-tf": "0", "Configuration": "32 x 32 px"}
    out = tmp_path_factory.mktemp("browser")
    index = write_report(out / "report", **data, thresholds=_calibrated(), metrics=fake_metrics(), identity=identity)
    return index


def test_the_report_passes_every_check_in_chromium(report, tmp_path):
    failed = run_checks([report], tmp_path / "screens", CHROMIUM)
    assert failed == {str(report): []}
    for shot in ("report-0-page.png", "report-0-panel.png"):
        assert (tmp_path / "screens" / shot).stat().st_size > 10_000


def test_the_check_catches_a_missing_row_and_a_page_too_wide(report, tmp_path):
    broken = report.parent / "broken.html"
    text = report.read_text()
    text = re.sub(r"<tr data-verdict=.*?</tr>", "", text, count=1)  # one image fewer in the table
    text = text.replace("<h1>", '<h1 style="width: 1500px">', 1)
    broken.write_text(text)
    (failed,) = run_checks([broken], tmp_path / "screens", CHROMIUM).values()
    assert any("table lists 5 images, expected 6" in f for f in failed)
    assert any("px wide at a 1024 px window" in f for f in failed)
