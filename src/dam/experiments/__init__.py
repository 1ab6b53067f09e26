"""Whole experiments over run folders: the paper's reproduction in stages, the stages past the paper, the
report.  Depends on every layer below it; only the command line imports it."""
