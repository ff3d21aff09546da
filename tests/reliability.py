"""Collects what the fault and hostile-input tests tried, and writes docs/RELIABILITY.md.

Tests take the ``reliability`` fixture and record each class of case they ran: how many cases,
what had to happen, and what did happen (a tally of the answers seen). Whether the class
passed is taken from the test's own result, so the report cannot claim more than was proven.
``--reliability-report`` (or ``python -m tests.report``) writes the tables at the end of the
run; without it nothing is written.
"""

from __future__ import annotations

import datetime as dt
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPORT = ROOT / "docs" / "RELIABILITY.md"
SECTIONS = {
    "faults": "Faults injected (real processes, `tests/faults/`)",
    "input": "Hostile input (`tests/security/`)",
    "tokens": "Tokens",
    "limits": "Rate limits and size limits",
}
_ROWS = pytest.StashKey[list["Row"]]()
_MATRIX = pytest.StashKey[list["MatrixRow"]]()
_DURATIONS = pytest.StashKey[Counter[str]]()
_STARTED = pytest.StashKey[float]()


@dataclass
class Row:
    section: str
    case: str
    count: int
    expected: str
    observed: Counter[str]
    nodeid: str
    backend: str | None
    passed: bool | None = None
    note: str | None = None  # one description instead of a tally
    shown_backend: str | None = None  # the database, when the test is not per backend


@dataclass
class MatrixRow:
    operation: str
    target: str
    expected: str
    observed: str
    nodeid: str
    backend: str | None
    passed: bool | None = None


@dataclass
class Recorder:
    """What one test tried. ``backend`` is taken from the test's parameters when it has one."""

    item: pytest.Item
    backend: str | None
    rows: list[Row] = field(default_factory=list)

    def record(
        self,
        section: str,
        case: str,
        *,
        expected: str,
        observed: Counter[str] | dict[str, int] | str | None = None,
        count: int | None = None,
        backend: str | None = None,
    ) -> None:
        """One class of cases. ``observed``: a tally of answers (its total is the count
        unless ``count`` is given) or one description for all of them. ``backend`` names the
        database when the test does not run per backend."""
        if section not in SECTIONS:
            raise ValueError(f"unknown section {section!r}")
        note = None
        if isinstance(observed, str) or observed is None:
            n = 1 if count is None else count
            tally: Counter[str] = Counter()
            note = observed or expected
        else:
            tally = Counter(observed)
            n = sum(tally.values()) if count is None else count
        row = Row(
            section,
            case,
            n,
            expected,
            tally,
            _base_nodeid(self.item),
            self.backend,
            note=note,
            shown_backend=backend or self.backend,
        )
        self.rows.append(row)
        self.item.config.stash[_ROWS].append(row)

    def matrix(self, operation: str, target: str, *, expected: str, observed: str) -> None:
        """One cell of the authorization matrix: a call with another user's ids."""
        row = MatrixRow(
            operation, target, expected, observed, _base_nodeid(self.item), self.backend
        )
        self.item.config.stash[_MATRIX].append(row)


def _base_nodeid(item: pytest.Item) -> str:
    return item.nodeid.split("[", 1)[0]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reliability-report",
        nargs="?",
        const=str(DEFAULT_REPORT),
        default=None,
        metavar="PATH",
        help="write the fault/hostile-input report (default docs/RELIABILITY.md)",
    )


_config: pytest.Config | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _config
    _config = config
    config.stash[_ROWS] = []
    config.stash[_MATRIX] = []
    config.stash[_DURATIONS] = Counter()
    config.stash[_STARTED] = time.monotonic()


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Recorder:
    callspec = getattr(request.node, "callspec", None)
    backend = callspec.params.get("backend") if callspec is not None else None
    return Recorder(request.node, backend)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]):  # type: ignore[no-untyped-def]
    report = (yield).get_result()
    if report.when != "call" and not report.failed:
        return
    base = _base_nodeid(item)
    callspec = getattr(item, "callspec", None)
    backend = callspec.params.get("backend") if callspec is not None else None
    for row in [*item.config.stash[_ROWS], *item.config.stash[_MATRIX]]:
        if row.nodeid == base and row.backend == backend and row.passed is not False:
            row.passed = report.passed


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::", 1)[0]
    for suite in ("tests/faults", "tests/security"):
        if path.startswith(suite + "/") and _config is not None:
            # Includes set-up: starting a test's own processes is part of what it costs.
            _config.stash[_DURATIONS][suite] += report.duration


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = session.config.getoption("--reliability-report")
    if not target:
        return
    rows = session.config.stash[_ROWS]
    matrix = session.config.stash[_MATRIX]
    if not rows and not matrix:
        return
    text = render(
        rows,
        matrix,
        session.config.stash[_DURATIONS],
        time.monotonic() - session.config.stash[_STARTED],
        session.testsfailed,
        session.config.invocation_params.args,
    )
    Path(target).write_text(text)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"reliability report written to {target}")


# -- rendering -----------------------------------------------------------------------------
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _tally(counter: Counter[str], limit: int = 8) -> str:
    items = counter.most_common()
    shown = ", ".join(f"{name} ×{n}" if len(items) > 1 else name for name, n in items[:limit])
    if len(items) > limit:
        shown += f", … ({len(items) - limit} more)"
    return shown


def _result(values: list[bool | None]) -> str:
    if any(v is False for v in values):
        return "**FAIL**"
    if any(v is None for v in values):
        return "not run"
    return "pass"


def render(
    rows: list[Row],
    matrix: list[MatrixRow],
    durations: Counter[str],
    wall: float,
    failed: int,
    args: tuple[str, ...],
) -> str:
    grouped: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        grouped.setdefault((row.section, row.case, row.expected), []).append(row)
    out = [
        "# Reliability and security report",
        "",
        "Generated by the test run itself: every row below is a class of cases a test in",
        "`tests/faults/` or `tests/security/` injected or sent against real processes (real",
        "Redis, PostgreSQL, web and Celery workers; no mocks), with the answers it saw. A row",
        "passes only if its test passed. Regenerate with one command:",
        "",
        "```sh",
        ".venv/bin/python -m tests.report",
        "```",
        "",
        f"Last run: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, Python "
        f"{platform.python_version()}, `pytest {' '.join(args)}`.",
        "",
    ]
    totals: Counter[str] = Counter()
    classes: Counter[str] = Counter()
    for section, title in SECTIONS.items():
        keys = [k for k in grouped if k[0] == section]
        if not keys:
            continue
        out += [f"## {title}", "", "| case | cases | must | observed | backends | result |"]
        out.append("|---|---:|---|---|---|---|")
        for key in keys:
            group = grouped[key]
            count = sum(r.count for r in group)
            observed: Counter[str] = Counter()
            for r in group:
                observed.update(r.observed)
            notes = list(dict.fromkeys(r.note for r in group if r.note))
            shown = " / ".join(notes) if notes else _tally(observed)
            backends = ", ".join(sorted({r.shown_backend or "-" for r in group}))
            totals[section] += count
            classes[section] += 1
            out.append(
                f"| {_cell(key[1])} | {count} | {_cell(key[2])} | {_cell(shown)} "
                f"| {backends} | {_result([r.passed for r in group])} |"
            )
        out.append("")
    if matrix:
        out += [
            "## Authorization matrix",
            "",
            "Mallory (a signed-in user) calls every event and route with Alice's ids: a topic",
            "she is not a member of, its room, its messages, Alice's push subscription and",
            "endpoint. Nothing of Alice's may be read or changed.",
            "",
            "| operation | with Alice's | must | observed | backends | result |",
            "|---|---|---|---|---|---|",
        ]
        cells: dict[tuple[str, str, str], list[MatrixRow]] = {}
        for m in matrix:
            cells.setdefault((m.operation, m.target, m.expected), []).append(m)
        for (operation, target, expected), group in cells.items():
            observed_text = "; ".join(sorted({m.observed for m in group}))
            backends = ", ".join(sorted({m.backend or "-" for m in group}))
            out.append(
                f"| `{_cell(operation)}` | {_cell(target)} | {_cell(expected)} "
                f"| {_cell(observed_text)} | {backends} | {_result([m.passed for m in group])} |"
            )
        totals["matrix"] = len(matrix)
        classes["matrix"] = len(cells)
        out.append("")
    failures = [r for r in rows if r.passed is False] + [m for m in matrix if m.passed is False]
    verdict = (
        "all passed"
        if not failures and not failed
        else f"{len(failures)} rows failed, {failed} tests failed"
    )
    out += [
        "## Closing note",
        "",
        f"- Faults: {classes['faults']} scenarios, each injected for real (SIGKILL of a web "
        "process and of a worker, redis-server and PostgreSQL stopped, the Redis primary "
        "killed under Sentinel, a web process stopped mid-send, a failing push service).",
        f"- Hostile input: {totals['input']} cases in {classes['input']} classes "
        "(hypothesis-generated and hand-written).",
        f"- Authorization matrix: {totals['matrix']} calls over {classes['matrix']} "
        "operation/target pairs.",
        f"- Tokens: {totals['tokens']} cases in {classes['tokens']} classes; limits: "
        f"{totals['limits']} cases in {classes['limits']} classes.",
        f"- Result: {verdict}.",
        f"- Runtime: tests/faults {durations['tests/faults']:.0f} s, tests/security "
        f"{durations['tests/security']:.0f} s (setup included), whole run {wall:.0f} s.",
        "",
        "What these runs do not prove: a push whose HTTP request had reached the push service",
        "when its worker died is sent again on redelivery (Web Push has no idempotency key; the",
        "per-topic `Topic` header makes the device show it once). After Redis comes back empty,",
        "lost increments exclude whoever is in the topic *now* (who was looking at send time is",
        "gone with Redis). The per-address connection limit is off by default (behind a proxy",
        "it needs `TRUSTED_PROXIES`). The fault tests use shortened timings (heartbeat TTL 3 s,",
        "visibility timeout 6 s); production defaults are in the README.",
        "",
    ]
    return "\n".join(out)
