"""A crafted output folder cannot put markup or script into the report.

Markup is planted into every string of every JSON file of a tiny reproduction (and into the names of the
dicts the report shows by their keys, the numbers it shows as they are, and a model's folder name); the
rebuilt page must hold it only as escaped text, and in headless Chromium none of it may run. A text where
the report computes with a number is a clear error naming the file, not a page.
"""

from __future__ import annotations

import json
import re
import shutil
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from markupsafe import escape

from dam.cli import main
from dam.errors import CheckpointError, DamError, DatasetError
from dam.experiments.report.browser import dump_dom
from dam.experiments.report.build import build_report
from dam.experiments.report.formatting import ReportDataError

MARK = "dam-pwned"  # an element the planted code would add to the page, seen in Chromium's DOM
_RUN = f"window.__pwned=1;document.documentElement.appendChild(document.createElement('{MARK}'))"
PAYLOADS = {
    "script": f"<script>{_RUN}</script>",
    "attribute": f'"><img src=x onerror="{_RUN}">',
}
# A model name is a folder name as well (runs/NAME, probes/NAME, probes/figures/memories_NAME.png), so no "/".
MODEL = "n2" + PAYLOADS["attribute"]

# Values left as they are (path patterns relative to the output folder, then the keys down to the value):
# planting them is a clear error of its own, tested below, or is done with a folder rename instead.
KEEP = {
    ("reproduce.json", ("data", "folder")),  # where the MNIST test set is read: a DatasetError
    ("runs/*/config.json", ("kind",)),  # the checkpoint's model type, checked on loading: a CheckpointError
    ("reproduce.json", ("preset", "models")),  # the run folders' names: n2's folders are renamed to MODEL
}
# Dicts whose keys the page shows as names: the markup is appended to their keys ("*" is any key), the same
# way wherever one name is a key (an attack's name keys four dicts of its table, and keeps its prefix).
SHOWN_KEYS = {
    ("reproduce.json", ("data", "md5")),
    ("reproduce.json", ("environment",)),
    ("stages.json", ()),
    ("beyond/attacks/robustness.json", ("models",)),
    *(
        ("beyond/attacks/robustness.json", ("models", "*", "tables", "*", by_attack))
        for by_attack in ("attacks", "gradient_free", "queries_per_image", "settings")
    ),
    ("beyond/*/detector.json", ("sets",)),
}
# Numbers the page shows as they are (counts, settings): a text there is shown, escaped.
SHOWN_NUMBERS = {
    ("reproduce.json", ("preset", "seed")),
    ("reproduce.json", ("preset", "images")),
    ("reproduce.json", ("preset", "per_class")),
    ("runs/n3/config.json", ("train", "lr")),
    ("runs/n3/config.json", ("train", "batch_size")),
    ("probes/adversarial_transfer.json", ("examples",)),
    ("probes/*/calibration.json", ("images",)),
    ("beyond/attacks/robustness.json", ("images", "count")),
    ("beyond/attacks/robustness.json", ("images", "seed")),
    ("beyond/attacks/robustness.json", ("suite", "pgd_steps")),
    ("beyond/attacks/robustness.json", ("suite", "hsj_steps")),
    ("beyond/detector/detector.json", ("data", "calibration_images")),
    ("beyond/detector/detector.json", ("data", "evaluation_images")),
    ("beyond/detector/detector.json", ("data", "noise_images")),
    ("beyond/detector/detector.json", ("sets", "*", "count")),
    ("beyond/adversarial/*/robustness.json", ("eval_images",)),
}


def _matches(rules: set[tuple[str, tuple[str, ...]]], file: str, keys: tuple[str, ...]) -> bool:
    return any(
        fnmatch(file, pattern)
        and len(keys) == len(want)
        and all(w in ("*", k) for w, k in zip(want, keys, strict=True))
        for pattern, want in rules
    )


def _plant(value: Any, payload: str, file: str, keys: tuple[str, ...] = ()) -> Any:
    if _matches(KEEP, file, keys):
        return value
    if isinstance(value, dict):
        rename = _matches(SHOWN_KEYS, file, keys)
        return {(k + payload if rename else k): _plant(v, payload, file, (*keys, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_plant(v, payload, file, keys) for v in value]
    if isinstance(value, str) or (isinstance(value, (int, float)) and _matches(SHOWN_NUMBERS, file, keys)):
        return payload
    return value


def _edit(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


def _rename_model(out: Path, old: str, new: str) -> None:
    """Give a model another name: its entry in reproduce.json and every folder and figure named after it."""

    def models(meta: dict[str, Any]) -> dict[str, Any]:
        meta["preset"]["models"] = [new if n == old else n for n in meta["preset"]["models"]]
        return meta

    _edit(out / "reproduce.json", models)
    for parent in (out / "runs", out / "probes"):
        (parent / old).rename(parent / new)
    for png in (out / "probes" / "figures").glob(f"*_{old}.png"):
        png.rename(png.with_name(png.name.removesuffix(f"_{old}.png") + f"_{new}.png"))
    adversarial = out / "beyond" / "adversarial" / f"{old}-adv"
    if adversarial.is_dir():
        adversarial.rename(adversarial.with_name(f"{new}-adv"))


def _copy(reproduction: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(reproduction, out, ignore=shutil.ignore_patterns("report"))
    return out


def _json_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.json") if "report" not in p.relative_to(out).parts)


class _Elements(HTMLParser):
    """Every start tag of a page with its attributes, as a browser's tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


@pytest.fixture(params=sorted(PAYLOADS))
def planted(request: pytest.FixtureRequest, tiny_reproduction: Path, tmp_path: Path) -> tuple[Path, str]:
    payload = PAYLOADS[request.param]
    out = _copy(tiny_reproduction, tmp_path)
    for path in _json_files(out):
        file = path.relative_to(out).as_posix()
        _edit(path, lambda data, file=file: _plant(data, payload, file))
    _rename_model(out, "n2", MODEL)
    return out, payload


def test_planted_markup_is_only_text(planted: tuple[Path, str]):
    out, payload = planted
    page = build_report(out).read_text()
    assert "<script>window.__pwned" not in page
    assert "<img src=x" not in page
    elements = _Elements()
    elements.feed(page)
    assert [t for t, _ in elements.tags].count("script") == 1  # the page's own check
    assert not [(t, a) for t, a in elements.tags for name in a if name.startswith("on")]
    assert MARK not in {t for t, _ in elements.tags}
    for tag, attrs in elements.tags:
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,"), attrs
    # The planted text reached the page, escaped, in every part of it: the header, each section, the tables'
    # cells and headers, attribute values (the figures' alt text, the tables' names) and the model's name.
    shown = str(escape(payload))
    assert page.count(shown) >= 50, page.count(shown)
    sections = re.split(r'<section id="', page)
    assert len(sections) == 11  # before the first, then summary, setup, fig2 to fig7, beyond, record
    assert shown in sections[0] and all(shown in s or str(escape(MODEL)) in s for s in sections[1:])
    assert f'alt="memories of {escape(MODEL)}"' in page
    for table in ("robust linf", "masking", "detector", "adversarial training"):
        body = page.split(f'data-required="{table}"')[1].split("</table>")[0]
        assert shown in body or str(escape(MODEL)) in body, table


def test_planted_markup_does_not_run_in_the_browser(planted: tuple[Path, str], chromium: str):
    out, _ = planted
    dom = dump_dom(build_report(out))
    assert "data-render-check=" in dom  # scripts do run: the page's own check marked the page
    assert f"<{MARK}" not in dom


def test_every_string_is_planted(planted: tuple[Path, str]):
    """The planting itself: every string is replaced (but for KEEP), so the test above covers them all."""
    out, payload = planted
    leftover = []
    for path in _json_files(out):
        file = path.relative_to(out).as_posix()

        def walk(value: Any, keys: tuple[str, ...], file: str = file) -> None:
            if _matches(KEEP, file, keys):
                return
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(v, (*keys, k))
            elif isinstance(value, list):
                for v in value:
                    walk(v, keys)
            elif isinstance(value, str) and value != payload:
                leftover.append((file, keys, value))

        walk(json.loads(path.read_text()), ())
    assert not leftover
    assert (out / "runs" / MODEL / "model.safetensors").exists()
    assert len(list((out / "probes" / "figures").glob(f"*_{MODEL}.png"))) == 3


# (file, keys, what the error must name): texts where the report computes with a number.
NUMBERS = [
    ("probes/n3/boundary.json", ("l2_mean",), "boundary.json"),
    ("probes/n3/calibration.json", ("accuracy",), "calibration.json"),
    ("probes/adversarial_transfer.json", ("error", 0, 0), "adversarial_transfer.json"),
    ("runs/n3/evaluation.json", ("error",), "evaluation.json"),
    ("stages.json", ("data", "seconds"), "stages.json"),
    ("beyond/attacks/robustness.json", ("suite", "linf", 0), "robustness.json"),
    ("beyond/detector/detector.json", ("threshold",), "detector.json"),
    ("beyond/adversarial/n2-adv/robustness.json", ("base", "test_error"), "robustness.json"),
]


def _set(data: Any, keys: tuple[Any, ...], value: Any) -> Any:
    target = data
    for k in keys[:-1]:
        target = target[k]
    assert isinstance(target[keys[-1]], (int, float)), (keys, target[keys[-1]])
    target[keys[-1]] = value
    return data


@pytest.mark.parametrize(("file", "keys", "named"), NUMBERS, ids=[f"{f}:{k[0]}" for f, k, _ in NUMBERS])
def test_text_where_a_number_is_needed_is_a_clear_error(
    tiny_reproduction: Path, tmp_path: Path, file: str, keys: tuple[Any, ...], named: str
):
    out = _copy(tiny_reproduction, tmp_path)
    _edit(out / file, lambda data: _set(data, keys, PAYLOADS["script"]))
    with pytest.raises(ReportDataError, match=re.escape(named)) as error:
        build_report(out)
    assert isinstance(error.value, DamError)
    assert "expected a number" in str(error.value) or "unexpected content" in str(error.value)
    assert not (out / "report" / "index.html").exists()


def test_the_cli_names_the_bad_file_in_one_line(tiny_reproduction: Path, tmp_path: Path, capsys):
    out = _copy(tiny_reproduction, tmp_path)
    _edit(out / "probes" / "n3" / "boundary.json", lambda data: _set(data, ("l2_mean",), "far"))
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert "boundary.json" in err and "'far'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("file", "keys", "error"),
    [("reproduce.json", ("data", "folder"), DatasetError), ("runs/n3/config.json", ("kind",), CheckpointError)],
)
def test_kept_identifiers_are_clear_errors_too(
    tiny_reproduction: Path, tmp_path: Path, file: str, keys: tuple[str, ...], error: type[DamError]
):
    """The values KEEP leaves alone say where to read data or what a checkpoint holds: markup there stops the
    report with an error that names the file, before any page is written."""
    out = _copy(tiny_reproduction, tmp_path)

    def plant(data: Any) -> Any:
        target = data
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = PAYLOADS["attribute"]
        return data

    _edit(out / file, plant)
    with pytest.raises(error):
        build_report(out)
    assert not (out / "report" / "index.html").exists()
