"""The reproduction report: the paper's claims beside measured values, as an HTML page."""

from dam.experiments.report.browser import RenderCheck, check_report, find_chromium
from dam.experiments.report.build import build_report
from dam.experiments.report.claims import Claim, Measurements, evaluate_claims

__all__ = ["Claim", "Measurements", "RenderCheck", "build_report", "check_report", "evaluate_claims", "find_chromium"]
