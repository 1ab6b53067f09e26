"""The report rendered in headless Chromium: complete pages pass, a missing figure or empty table fails.

The ``chromium`` fixture (conftest.py) skips these without a Chromium, and fails them in CI."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from dam.experiments.report.browser import check_report
from dam.experiments.report.build import CHECK_JS


def _png(tmp_path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    path = tmp_path / "f.png"
    fig.savefig(path)
    plt.close(fig)
    return base64.b64encode(path.read_bytes()).decode()


def _page(tmp_path: Path, img_src: str, rows: str) -> Path:
    html = (
        f"<!DOCTYPE html><html><head><script>{CHECK_JS}</script></head><body>"
        f'<section id="fig2" data-figure="1"><img alt="memories" src="{img_src}"></section>'
        f'<table data-required="adversarial"><thead><tr><th>a</th></tr></thead><tbody>{rows}</tbody></table>'
        "</body></html>"
    )
    path = tmp_path / "index.html"
    path.write_text(html)
    return path


def test_complete_page_passes_and_gives_a_screenshot(chromium: str, tmp_path: Path):
    page = _page(tmp_path, f"data:image/png;base64,{_png(tmp_path)}", "<tr><td>1%</td></tr>")
    result = check_report(page, tmp_path / "shot.png")
    assert result.ok, result.problems
    assert result.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.page_height > 0


def test_a_screenshot_replaces_an_old_file_and_a_folder_is_refused(chromium: str, tmp_path: Path):
    import pytest

    from dam.errors import ReportCheckError

    page = _page(tmp_path, f"data:image/png;base64,{_png(tmp_path)}", "<tr><td>1%</td></tr>")
    (tmp_path / "old.png").write_text("an older file of that name")
    result = check_report(page, tmp_path / "old.png")
    assert result.ok and (tmp_path / "old.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "folder").mkdir()
    with pytest.raises(ReportCheckError, match="is a folder"):
        check_report(page, tmp_path / "folder")


def test_missing_figure_fails(chromium: str, tmp_path: Path):
    result = check_report(_page(tmp_path, "missing:memories_n2.png", "<tr><td>1%</td></tr>"))
    assert not result.ok
    assert any("image not rendered: memories" in p for p in result.problems)


def test_corrupt_figure_fails(chromium: str, tmp_path: Path):
    result = check_report(_page(tmp_path, "data:image/png;base64,iVBORw0KGgoAAAA", "<tr><td>1%</td></tr>"))
    assert not result.ok


def test_empty_table_fails(chromium: str, tmp_path: Path):
    result = check_report(_page(tmp_path, f"data:image/png;base64,{_png(tmp_path)}", ""))
    assert result.problems == ["empty table: adversarial"]


def test_real_report_renders(chromium: str, tiny_reproduction: Path):
    """The report of a tiny reproduction, in the browser: every figure decodes, every table has rows."""
    report = tiny_reproduction / "report"
    result = check_report(report / "index.html", report / "screenshot.png")
    assert result.ok, result.problems
    assert result.page_height > 3000  # all sections laid out, not an empty page
    page = (report / "index.html").read_text()
    broken = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "missing:x", page, count=1)
    (report / "broken.html").write_text(broken)
    assert not check_report(report / "broken.html").ok
