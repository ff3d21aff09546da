"""The web process tunes CPython's collector (webapp/gc_tuning.py); GC_TUNING=0 leaves it be."""

from __future__ import annotations

import pytest

from tests.conftest import PYTHON, base_env, run_in_repo

PROBE = "import gc, wsgi; print(gc.get_freeze_count(), gc.get_threshold()[0])"


@pytest.mark.parametrize(("setting", "tuned"), [(None, True), ("0", False)])
def test_web_entry_point_freezes_start_up_and_raises_the_young_threshold(
    tmp_path, setting: str | None, tuned: bool
) -> None:
    env = base_env(f"sqlite:///{tmp_path / 'beacon.db'}", "redis://127.0.0.1:1/0")
    if setting is not None:
        env["GC_TUNING"] = setting
    out = run_in_repo(env, PYTHON, "-c", PROBE).stdout.split()
    frozen, young = int(out[-2]), int(out[-1])
    if tuned:
        assert frozen > 10_000  # the libraries and the app built at start-up
        assert young == 20_000
    else:
        assert frozen == 0
        assert young == 700  # CPython's default
