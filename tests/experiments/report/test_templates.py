"""The report's templates: every value escaped, an undefined value an error, no way to mark data as markup."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import jinja2
import pytest

from dam.experiments.report.build import CHECK_JS, template_environment
from dam.experiments.report.formatting import ReportDataError, Verdict, fmt, pct, table


def test_values_are_escaped_and_undefined_values_are_errors():
    env = template_environment()
    assert env.from_string("<p title='{{ v }}'>{{ v }}</p>").render(v="'><b>x</b>") == (
        "<p title='&#39;&gt;&lt;b&gt;x&lt;/b&gt;'>&#39;&gt;&lt;b&gt;x&lt;/b&gt;</p>"
    )
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ section.title }}").render(section={})
    with pytest.raises(jinja2.UndefinedError):
        env.get_template("report.html").render()


def test_no_template_marks_anything_safe():
    folder = files("dam.experiments.report") / "templates"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".html"))
    assert names == ["base.html", "macros.html", "past_paper.html", "report.html"]
    for name in names:
        source = (folder / name).read_text()
        for forbidden in ("|safe", "| safe", "{% autoescape", "Markup", "<script"):
            assert forbidden not in source or (name == "base.html" and forbidden == "<script"), (name, forbidden)


def test_table_cells_are_text_except_verdicts():
    t = table(["a", 1], [[Verdict("agrees"), {"verdict": "x", "css": "y"}, 3, None]], "t", 2)
    assert t["header"] == ["a", "1"]
    assert t["rows"] == [[{"verdict": "agrees", "css": "ok"}, "{'verdict': 'x', 'css': 'y'}", "3", "None"]]
    macros = template_environment().get_template("macros.html").module
    html = str(macros.table(t))
    assert '<span class="verdict ok">agrees</span>' in html and "&#39;verdict&#39;" in html


def test_numbers_are_numbers():
    assert pct(0.1234) == "12.3%" and pct(None) == "-" and fmt(2, ".1f") == "2.0"
    for bad in ("0.5", True, None, [1]):
        with pytest.raises(ReportDataError, match="expected a number"):
            fmt(bad, ".3f")


def test_page_holds_the_check_script_and_the_sections(tiny_reproduction: Path):
    page = (tiny_reproduction / "report" / "index.html").read_text()
    assert page.count("<script") == 1 and CHECK_JS in page
    for section in ("setup", "summary", "fig2", "fig3", "fig4", "fig5", "fig6", "fig7", "beyond"):
        assert page.count(f'<section id="{section}"') == 1
    assert page.count('data-figure="1"') == 6
