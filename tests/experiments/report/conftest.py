"""Shared by the report tests: a headless Chromium, which CI must have."""

from __future__ import annotations

import os

import pytest

from dam.experiments.report.browser import find_chromium


@pytest.fixture(scope="session")
def chromium() -> str:
    exe = find_chromium()
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                "Chromium is missing: scripts/chromium.sh (run by .ci/run) installs Debian's for the report check"
            )
        pytest.skip("no Chromium installed (apt-get install chromium)")
    return exe
