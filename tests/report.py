"""Regenerate docs/RELIABILITY.md: run the fault and hostile-input suites and write the report.

.venv/bin/python -m tests.report [extra pytest arguments]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REPORT = "docs/RELIABILITY.md"  # importing tests.reliability here would defeat its assert rewriting


def main(argv: list[str]) -> int:
    os.chdir(ROOT)
    args = ["-q", "tests/faults", "tests/security", f"--reliability-report={REPORT}"]
    return int(pytest.main([*args, *argv]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
