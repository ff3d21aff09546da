"""deploy/systemd/: the units are valid, and their commands run and stop as systemd would.

systemd is not PID 1 here, so the test plays its part for each unit file as written: it parses
the unit (repeated keys, continuation lines, specifiers such as ``%i`` and ``%%``), builds the
environment systemd would (a clean one, ``Environment=``, then ``EnvironmentFile=`` parsed by
systemd's rules, ``STATE_DIRECTORY``), runs ``ExecStart=`` in ``WorkingDirectory=`` with the
production paths mapped to this checkout (/opt/beacon -> the repository, /var/lib/beacon -> a
temporary state directory, /etc/beacon/beacon.env -> a file shaped like deploy/README.md's),
and stops it the way ``KillSignal=``/``KillMode=``/``TimeoutStopSec=`` say: the signal to the
main process (``mixed``) or to every process (``control-group``), SIGKILL to what is left after
the timeout, or once the main process has exited. Not exercised: ``User=`` (the processes run
as the test's user) and the sandboxing options, which need systemd itself; ``systemd-analyze
verify`` checks their syntax.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import ROOT, make_database_url, stack_env
from tests.faults.conftest import Gate, gated_push_service
from tests.harness.ports import free_port
from tests.harness.processes import ManagedProcess, _group_alive, wait_http_ok, wait_log_contains
from tests.harness.sio_client import RecordingClient
from tests.harness.waiting import wait_until
from tests.pushservice.server import PushServiceClient

UNIT_DIR = ROOT / "deploy" / "systemd"
PRODUCTION_ROOT = "/opt/beacon"
PRODUCTION_STATE = "/var/lib/beacon"
PRODUCTION_ENV_FILE = "/etc/beacon/beacon.env"
WORKERS = ("unread", "push", "webhooks", "email")
PUBLIC_URL = "https://beacon.example.com"
# The signals systemd counts as a clean end of the main process after its stop signal.
CLEAN_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE}


# -- reading unit files ---------------------------------------------------------------------------
@dataclass
class Unit:
    """One unit file: ``{section: [(key, value), ...]}`` in file order (keys repeat)."""

    name: str  # as systemd knows it: "beacon-web@8001.service" for an instance
    path: Path
    sections: dict[str, list[tuple[str, str]]]

    @property
    def instance(self) -> str:
        stem = self.name.rsplit(".", 1)[0]
        return stem.split("@", 1)[1] if "@" in stem else ""

    def values(self, section: str, key: str) -> list[str]:
        """Every value of a list-like key; an empty assignment resets the list, as in systemd."""
        out: list[str] = []
        for k, v in self.sections.get(section, []):
            if k == key:
                out = [] if v == "" else [*out, v]
        return out

    def get(self, section: str, key: str, default: str | None = None) -> str | None:
        found = [v for k, v in self.sections.get(section, []) if k == key]
        return found[-1] if found else default

    def words(self, section: str, key: str) -> list[str]:
        """Space-separated list keys (After=, WantedBy=...), over every assignment."""
        return [w for v in self.values(section, key) for w in v.split()]

    def spec(self, value: str) -> str:
        """Resolve the specifiers systemd would; any other one is a mistake in the unit (a
        bare ``%h`` meant for Celery is systemd's home directory: write ``%%h``)."""
        prefix = self.name.rsplit(".", 1)[0].split("@", 1)[0]

        def one(match: re.Match[str]) -> str:
            code = match.group(1)
            known = {
                "%": "%",
                "i": self.instance,
                "I": self.instance,
                "n": self.name,
                "N": self.name.rsplit(".", 1)[0],
                "p": prefix,
            }
            if code not in known:
                raise AssertionError(f"{self.path.name}: specifier %{code} in {value!r}")
            return known[code]

        return re.sub(r"%(.)", one, value)


def read_unit(path: Path, instance: str | None = None) -> Unit:
    """Parse a unit file as systemd does: comments (# ;), ``\\`` continuation lines, repeated
    keys kept in order. ``instance`` names an instance of a template."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}: cannot parse {raw!r}"
        current.append((key.strip(), value.strip()))
    name = path.name if instance is None else path.name.replace("@.", f"@{instance}.")
    return Unit(name, path, sections)


def unit_files() -> list[Path]:
    return sorted(p for p in UNIT_DIR.iterdir() if p.suffix in {".service", ".target"})


def parse_environment_file(text: str) -> dict[str, str]:
    """``EnvironmentFile=`` as systemd reads it: ``KEY=VALUE`` lines, ``#``/``;`` comments,
    whitespace around the key and an unquoted value stripped, single quotes literal, double
    quotes with backslash escapes, backslash-newline continuing a line; lines that are not a
    valid assignment are ignored."""
    env: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        # skip blank space and comment lines
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i < n and text[i] in "#;":
            while i < n and text[i] != "\n":
                i += 1
            continue
        start = i
        while i < n and text[i] not in "=\n":
            i += 1
        key = text[start:i].strip()
        if i >= n or text[i] != "=":
            continue
        i += 1
        while i < n and text[i] in " \t":
            i += 1
        value: list[str] = []
        trailing = 0  # unquoted whitespace at the end, stripped
        while i < n and text[i] != "\n":
            c = text[i]
            if c == "'":
                end = text.index("'", i + 1)
                value.append(text[i + 1 : end])
                i, trailing = end + 1, 0
            elif c == '"':
                i += 1
                while text[i] != '"':
                    if text[i] == "\\" and i + 1 < n:
                        i += 1
                        if text[i] != "\n":
                            value.append(text[i])
                    else:
                        value.append(text[i])
                    i += 1
                i, trailing = i + 1, 0
            elif c == "\\" and i + 1 < n:
                if text[i + 1] != "\n":
                    value.append(text[i + 1])
                i, trailing = i + 2, 0
            else:
                value.append(c)
                trailing = trailing + 1 if c in " \t" else 0
                i += 1
        joined = "".join(value)
        if trailing:
            joined = joined[:-trailing]
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            env[key] = joined
    return env


def parse_timespan(value: str) -> float:
    """``90``, ``90s``, ``30min``, ``2min 30s``, ``infinity`` (seconds)."""
    if value == "infinity":
        return float("inf")
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001}
    parts = re.findall(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts and "".join(f"{n}{u}" for n, u in parts) == value.replace(" ", ""), value
    return sum(float(number) * units[unit] for number, unit in parts)


def expand_command(line: str, env: dict[str, str]) -> list[str]:
    """An ``ExecStart=`` line to argv: quoting, ``$VAR`` (split into words) and ``${VAR}``
    (one word), then systemd's prefixes (``-@:+!``) dropped."""
    words: list[str] = []
    for word in shlex.split(line):
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            words.extend(env.get(whole.group(1), "").split())
            continue
        words.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m[1], ""), word))
    words[0] = words[0].lstrip("-@:+!")
    return words


# -- running a unit as systemd would -------------------------------------------------------------
@dataclass
class Host:
    """Where the production paths point during the test."""

    env_file: Path
    state_dir: Path
    log_dir: Path

    def map(self, value: str) -> str:
        for production, here in (
            (PRODUCTION_ENV_FILE, str(self.env_file)),
            (PRODUCTION_STATE, str(self.state_dir)),
            (PRODUCTION_ROOT, str(ROOT)),
        ):
            if value == production or value.startswith(production + "/"):
                return here + value[len(production) :]
        return value


@dataclass
class Service:
    unit: Unit
    proc: ManagedProcess
    argv: list[str]
    env: dict[str, str]

    @property
    def stop_timeout(self) -> float:
        return parse_timespan(self.unit.get("Service", "TimeoutStopSec", "90") or "90")


@dataclass
class Stopped:
    returncode: int
    seconds: float
    killed: bool  # systemd had to send SIGKILL after TimeoutStopSec

    def clean(self, unit: Unit) -> bool:
        """What systemd counts as a successful stop (not "failed")."""
        if self.killed:
            return False
        if self.returncode < 0:
            return -self.returncode in CLEAN_SIGNALS
        ok = {"0", *(unit.get("Service", "SuccessExitStatus", "") or "").split()}
        return str(self.returncode) in ok


def service_environment(unit: Unit, host: Host) -> dict[str, str]:
    """The environment systemd gives the unit's processes (nothing of the test's own)."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
        "LANG": "C.UTF-8",
        "HOME": host.map("/var/lib/beacon"),  # the beacon user's home (deploy/README.md)
        "LOGNAME": os.environ.get("USER", "root"),
        "USER": os.environ.get("USER", "root"),
        "SHELL": "/usr/sbin/nologin",
        "INVOCATION_ID": uuid.uuid4().hex,
    }
    if unit.get("Service", "StateDirectory"):
        env["STATE_DIRECTORY"] = ":".join(
            host.map(f"/var/lib/{d}") for d in unit.words("Service", "StateDirectory")
        )
    for assignment in unit.values("Service", "Environment"):
        for word in shlex.split(unit.spec(assignment)):
            key, _, value = word.partition("=")
            env[key] = host.map(value)
    for path in unit.values("Service", "EnvironmentFile"):
        optional = path.startswith("-")
        mapped = Path(host.map(unit.spec(path.lstrip("-"))))
        if optional and not mapped.exists():
            continue
        env.update(parse_environment_file(mapped.read_text()))  # overrides Environment=
    return env


def start_unit(unit: Unit, host: Host) -> Service:
    """``ExecStart=`` of the unit, in ``WorkingDirectory=``, in a process group of its own
    (the unit's control group)."""
    env = service_environment(unit, host)
    for directory in unit.words("Service", "StateDirectory"):
        Path(host.map(f"/var/lib/{directory}")).mkdir(parents=True, exist_ok=True)
    lines = unit.values("Service", "ExecStart")
    assert len(lines) == 1, f"{unit.name}: one ExecStart= expected, got {lines}"
    argv = [host.map(w) for w in expand_command(unit.spec(lines[0]), env)]
    assert argv[0].startswith("/"), f"{unit.name}: ExecStart= must name an absolute path"
    assert os.access(argv[0], os.X_OK), f"{argv[0]} is missing: run ./scripts/bootstrap.sh"
    cwd = host.map(unit.get("Service", "WorkingDirectory") or "/")
    proc = ManagedProcess(unit.name, argv, env, cwd, host.log_dir, inherit_env=False)
    return Service(unit, proc, argv, env)


def stop_unit(service: Service) -> Stopped:
    """``systemctl stop``: KillSignal= to the main process (KillMode=mixed/process) or to the
    whole group (control-group); SIGKILL to the group after TimeoutStopSec=; with mixed and
    control-group, SIGKILL to whatever is left once the main process has exited."""
    unit, proc = service.unit, service.proc
    sig = signal.Signals[unit.get("Service", "KillSignal", "SIGTERM") or "SIGTERM"]
    mode = unit.get("Service", "KillMode", "control-group")
    started = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        if mode == "control-group":
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
    killed = False
    try:
        code = proc.wait(timeout=service.stop_timeout)
    except subprocess.TimeoutExpired:
        killed = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
    seconds = time.monotonic() - started
    if mode != "process" and _group_alive(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return Stopped(code, seconds, killed)


def run_oneshot(unit: Unit, host: Host) -> Service:
    """A ``Type=oneshot`` unit: its ExecStart= runs to a successful end within
    TimeoutStartSec= (at most two minutes here)."""
    assert unit.get("Service", "Type") == "oneshot", unit.name
    service = start_unit(unit, host)
    timeout = parse_timespan(unit.get("Service", "TimeoutStartSec", "90") or "90")
    code = service.proc.wait(timeout=min(timeout, 120))
    assert code == 0, f"{unit.name} failed ({code}):\n{service.proc.log_tail()}"
    return service


def stop_all(services: list[Service]) -> dict[str, Stopped]:
    """``systemctl stop beacon.target``: every unit at once."""
    results: dict[str, Stopped] = {}

    def stop(service: Service) -> None:
        results[service.unit.name] = stop_unit(service)

    threads = [threading.Thread(target=stop, args=(s,)) for s in services]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


# -- static checks and systemd-analyze verify -----------------------------------------------------
def procfile() -> dict[str, list[str]]:
    commands = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, command = line.partition(":")
            commands[name.strip()] = shlex.split(command)
    return commands


def test_units_verify_and_match_the_procfile(tmp_path):
    """Every unit passes ``systemd-analyze verify`` (on copies with /opt/beacon mapped to this
    checkout, so that it can check the commands exist); each runs the Procfile's command from
    the production venv, as ``beacon``, with the settings file, a restart policy and a graceful
    stop; all of them belong to beacon.target."""
    files = {p.name: p for p in unit_files()}
    expected = {
        "beacon.target",
        "beacon-migrate.service",
        "beacon-web@.service",
        "beacon-beat.service",
        "beacon-flower.service",
        *(f"beacon-worker-{w}.service" for w in WORKERS),
    }
    assert set(files) == expected
    commands = procfile()
    services = {
        "beacon-web@.service": "web",
        "beacon-beat.service": "beat",
        "beacon-flower.service": "flower",
        **{f"beacon-worker-{w}.service": f"worker_{w}" for w in WORKERS},
    }
    celeryconfig = (ROOT / "celeryconfig.py").read_text()
    soft = float(re.search(r"^worker_soft_shutdown_timeout = ([\d.]+)", celeryconfig, re.M)[1])
    for name, path in files.items():
        unit = read_unit(path, "8001" if "@." in name else None)
        if name == "beacon.target":
            assert unit.words("Install", "WantedBy") == ["multi-user.target"]
            continue
        assert unit.words("Install", "WantedBy") == ["beacon.target"], name
        assert "beacon.target" in unit.words("Unit", "PartOf"), name
        assert unit.get("Service", "User") == "beacon", name
        assert unit.get("Service", "WorkingDirectory") == PRODUCTION_ROOT, name
        assert unit.values("Service", "EnvironmentFile") == [PRODUCTION_ENV_FILE], name
        assert "BEACON_ENV_FILE=" in unit.get("Service", "Environment", "").split(), name
        for key, value in (
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
        ):
            assert unit.get("Service", key) == value, (name, key)
        if name == "beacon-migrate.service":
            assert unit.get("Service", "Type") == "oneshot"
            assert unit.get("Service", "RemainAfterExit") == "yes"
            assert unit.get("Service", "ExecStart") == (
                "/opt/beacon/.venv/bin/flask --app wsgi db upgrade"
            )
            continue
        # The Procfile's command, with the venv's absolute path (and %%h for Celery's %h).
        argv = shlex.split(unit.spec(unit.get("Service", "ExecStart") or ""))
        if argv[0] == "/usr/bin/env":  # web: PORT=%i HOST=127.0.0.1 set on the command line
            assignments = [w for w in argv[1:] if "=" in w and not w.startswith("/")]
            assert assignments == ["PORT=8001", "HOST=127.0.0.1"], argv
            argv = argv[1 + len(assignments) :]
        want = commands[services[name]]
        want = [
            f"{PRODUCTION_ROOT}/{w.removeprefix('./')}" if w.startswith((".venv/", "./")) else w
            for w in want
        ]
        if name == "beacon-beat.service":
            want[want.index("--schedule") + 1] = f"{PRODUCTION_STATE}/celerybeat-schedule"
            assert unit.words("Service", "StateDirectory") == ["beacon"]
        assert argv == want, name
        assert unit.get("Service", "Restart") in {"always", "on-failure"}, name
        assert parse_timespan(unit.get("Service", "RestartSec") or "0") >= 1, name
        assert unit.get("Unit", "StartLimitBurst") and unit.get("Unit", "StartLimitIntervalSec")
        assert unit.get("Service", "KillMode") == "mixed", name
        assert unit.get("Service", "MemoryMax") and unit.get("Service", "TasksMax"), name
        if name != "beacon-flower.service":  # everything that uses the database
            assert "beacon-migrate.service" in unit.words("Unit", "Requires"), name
            assert "beacon-migrate.service" in unit.words("Unit", "After"), name
        if name.startswith("beacon-worker-"):
            # Longer than Celery's soft shutdown plus the longest task (the unit says why).
            assert parse_timespan(unit.get("Service", "TimeoutStopSec") or "") > soft + 30, name
    web = read_unit(files["beacon-web@.service"], "8001")
    assert int(web.get("Service", "LimitNOFILE") or 0) >= 65536

    # systemd-analyze verify on copies whose paths exist here.
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is required in CI (apt-get install systemd)")
        pytest.skip("systemd-analyze is not installed: the units' syntax is not verified")
    for path in files.values():
        (tmp_path / path.name).write_text(path.read_text().replace(PRODUCTION_ROOT, str(ROOT)))
    names = [n.replace("@.", "@8001.") for n in sorted(files)]
    result = subprocess.run(
        [analyze, "--man=no", "verify", *names],
        cwd=tmp_path,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on unknown keys and bad values ("ignoring"): any output is a finding.
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, output


# -- running the units -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gated_push() -> Iterator[tuple[PushServiceClient, Gate]]:
    """A local push service whose requests the test can hold; held ones are dropped (503,
    never processed) when it opens, as by a push service that never got to them."""
    with gated_push_service(holding=False, drop_held=True) as pair:
        yield pair


@dataclass
class Deployment:
    host: Host
    env: dict[str, str]
    units: dict[str, Path]
    push: PushServiceClient
    gate: Gate
    app: Any

    def unit(self, name: str, instance: str | None = None) -> Unit:
        return read_unit(self.units[name], instance)

    def start(self, name: str, instance: str | None = None) -> Service:
        return start_unit(self.unit(name, instance), self.host)

    def cli(self, *args: str) -> str:
        result = self.app.test_cli_runner().invoke(args=["beacon", *args])
        assert result.exit_code == 0, result.output
        return result.output.strip()

    def user(self, prefix: str) -> tuple[str, str, str]:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        user_id = self.cli("create-user", name)
        return user_id, name, self.cli("token", name)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, request, redis_server, vapid_keys, gated_push):
    """/etc/beacon/beacon.env as deploy/README.md shapes it (test values: SQLite, the
    session's Redis, the local push service, short push timeouts), migrated by
    beacon-migrate.service."""
    push, gate = gated_push
    base = tmp_path_factory.mktemp("systemd-host")
    host = Host(base / "beacon.env", base / "state" / "beacon", base / "logs")
    host.log_dir.mkdir()
    database_url = make_database_url("sqlite", "systemd_units", base, request)
    env = stack_env(
        database_url,
        redis_server.new_db_url(),
        0,
        push,
        vapid_keys,
        HOST="127.0.0.1",
        # Web instances take their port from the unit (%i), whatever this file says.
        PORT="9",
        TRUSTED_PROXIES="1",
        DEV_LOGIN="0",
        APP_BASE_URL=PUBLIC_URL,
        EMAIL_LINK_SECRET="test-link-secret-" + "y" * 32,
        FLOWER_BASIC_AUTH="ops:flower-test-password",
        FLOWER_PORT=str(free_port()),
        PUSH_REQUEST_TIMEOUT="3",
    )
    env.pop("BEACON_ENV_FILE")  # the units set it
    lines = ["# /etc/beacon/beacon.env (test values)"]
    for key, value in env.items():
        # One quoted value: systemd takes the quotes off (python-dotenv too).
        lines.append(f'{key}="{value}"' if key == "VAPID_SUBJECT" else f"{key}={value}")
    host.env_file.write_text("\n".join(lines) + "\n")
    assert parse_environment_file(host.env_file.read_text()) == env
    units = {p.name: p for p in unit_files()}
    migrate = run_oneshot(read_unit(units["beacon-migrate.service"]), host)
    assert "Running upgrade" in migrate.proc.log_text()  # created the schema

    from config import load_settings
    from webapp import create_app

    app = create_app(load_settings(env), serve_sockets=False)
    yield Deployment(host, env, units, push, gate, app)
    with app.app_context():
        from webapp.extensions import db

        db.engine.dispose()


def subscribe(deployment: Deployment, url: str, token: str) -> dict:
    sub = deployment.push.new_subscription()
    response = requests.post(
        f"{url}/api/notifications/subscribe",
        json={"endpoint": sub["endpoint"], "keys": sub["keys"]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return sub


def pushed_ids(push: PushServiceClient, sub: dict) -> list[int]:
    return sorted(json.loads(m["payload"])["message_id"] for m in push.messages(sub))


def broker_idle(redis_url: str) -> bool:
    """No push task waits in the queue and none is taken but unacknowledged (the Redis
    transport keeps delayed retries there too): everything was done and acknowledged."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return client.llen("push") == 0 and client.hlen("unacked") == 0
    finally:
        client.close()


def unread_count(d: Deployment, user_id: str, topic_id: str) -> int:
    from sqlalchemy import select

    from webapp.extensions import db
    from webapp.models import TopicMember

    with d.app.app_context():
        return db.session.execute(
            select(TopicMember.unread_count).where(
                TopicMember.topic_id == uuid.UUID(topic_id),
                TopicMember.user_id == uuid.UUID(user_id),
            )
        ).scalar_one()


def assert_stopped_in_time(results: dict[str, Stopped], services: list[Service]) -> None:
    for service in services:
        stopped = results[service.unit.name]
        assert stopped.clean(service.unit), (service.unit.name, stopped, service.proc.log_tail())
        assert stopped.seconds < service.stop_timeout, (service.unit.name, stopped)


@pytest.mark.slow
def test_every_unit_runs_serves_and_stops_as_systemd_would(deployment):
    """beacon.target on one host: two web instances (ports from %i, although beacon.env says
    PORT=9), the four workers, beat and Flower, each from its unit's ExecStart=. A message sent
    through one instance reaches a member on the other, the unread worker's count reaches it
    too, and the push worker pushes to an offline member; beat keeps its schedule in the
    StateDirectory=; Flower answers on loopback with basic auth only. ``systemctl stop
    beacon.target`` then ends every process cleanly within its TimeoutStopSec=."""
    d = deployment
    ports = [free_port(), free_port()]
    webs = [d.start("beacon-web@.service", str(port)) for port in ports]
    workers = [d.start(f"beacon-worker-{w}.service") for w in WORKERS]
    beat, flower = d.start("beacon-beat.service"), d.start("beacon-flower.service")
    services = [*webs, *workers, beat, flower]
    clients: list[RecordingClient] = []
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url, web in zip(urls, webs, strict=True):
            wait_http_ok(f"{url}/healthz", timeout=60, proc=web.proc)
        for worker in workers:
            wait_log_contains(worker.proc, " ready.", timeout=60)

        # Beat: its only write, the schedule, in the state directory the unit gives it.
        schedule = beat.argv[beat.argv.index("--schedule") + 1]
        assert Path(schedule).parent == d.host.state_dir == Path(beat.env["STATE_DIRECTORY"])
        wait_log_contains(beat.proc, "beat: Starting", timeout=60)
        wait_until(
            lambda: any(d.host.state_dir.glob("celerybeat-schedule*")),
            timeout=30,
            message="beat wrote no schedule in its StateDirectory",
        )

        # Flower: on 127.0.0.1 (flower.sh's default), refuses without the basic auth.
        flower_url = f"http://127.0.0.1:{d.env['FLOWER_PORT']}"
        auth = tuple(d.env["FLOWER_BASIC_AUTH"].split(":", 1))
        flower.proc.wait_ready(
            lambda: requests.get(f"{flower_url}/healthcheck", timeout=2).text == "OK",
            timeout=60,
            what="answering",
        )
        assert requests.get(f"{flower_url}/workers", timeout=10).status_code == 401
        assert requests.get(f"{flower_url}/workers", timeout=10, auth=auth).status_code == 200

        # Both instances and the workers, end to end.
        alice_id, alice_name, alice = d.user("alice")
        bob_id, bob_name, bob = d.user("bob")
        carol_id, carol_name, carol = d.user("carol")
        room_id, topic_id = d.cli(
            "create-topic",
            "ops",
            f"t-{uuid.uuid4().hex[:6]}",
            *("--member", alice_name, "--member", bob_name, "--member", carol_name),
        ).split()
        sub = subscribe(d, urls[1], carol)  # carol is offline: she gets a push
        receiver = RecordingClient(name="bob").connect(urls[1], bob)
        sender = RecordingClient(name="alice").connect(urls[0], alice)
        clients += [receiver, sender]
        ack = sender.call(
            "send_message", {"room_id": room_id, "topic_id": topic_id, "message": "hi"}
        )
        assert ack["ok"], ack
        message_id = ack["message"]["id"]
        alert = receiver.wait_for_event("global_message_alert", timeout=20)
        assert alert["message_id"] == message_id
        update = receiver.wait_for_event("unread_update", timeout=20)
        assert update["topic_id"] == topic_id and update["unread_count"] == 1
        assert unread_count(d, bob_id, topic_id) == 1 and unread_count(d, carol_id, topic_id) == 1
        wait_until(lambda: pushed_ids(d.push, sub) == [message_id], timeout=20, message="no push")
    finally:
        for client in clients:
            client.disconnect()
        results = stop_all(services)
    assert_stopped_in_time(results, services)


@pytest.mark.slow
def test_stopping_the_push_worker_finishes_or_requeues_its_pushes(deployment):
    """A push worker from beacon-worker-push.service holds sends in flight (the push service
    does not answer). Stopped as systemd does (SIGTERM to the main process: Celery's warm
    shutdown), it ends cleanly within TimeoutStopSec= (its sends time out and are booked for a
    retry, the retries it had taken go back to the queue). Once the push service answers again
    and a new worker runs, every push arrives exactly once and nothing is left in the broker:
    none lost with the stopped worker (the visibility timeout, an hour, is not waited for),
    none sent twice."""
    d = deployment
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    web = d.start("beacon-web@.service", str(port))
    worker = d.start("beacon-worker-push.service")
    services = [web, worker]
    sender = None
    try:
        wait_http_ok(f"{url}/healthz", timeout=60, proc=web.proc)
        wait_log_contains(worker.proc, " ready.", timeout=60)
        _, alice_name, alice = d.user("alice")
        _, bob_name, bob = d.user("bob")
        _, carol_name, carol = d.user("carol")
        room_id, topic_id = d.cli(
            "create-topic",
            "ops",
            f"t-{uuid.uuid4().hex[:6]}",
            *("--member", alice_name, "--member", bob_name, "--member", carol_name),
        ).split()
        subs = [subscribe(d, url, token) for token in (bob, bob, carol)]  # bob: two devices
        sender = RecordingClient(name="alice").connect(url, alice)
        acked = []
        d.gate.close()
        try:
            for i in range(3):
                ack = sender.call(
                    "send_message", {"room_id": room_id, "topic_id": topic_id, "message": f"m{i}"}
                )
                assert ack["ok"], ack
                acked.append(ack["message"]["id"])
            wait_until(lambda: d.gate.held >= 9, timeout=20, message="no send reached the gate")
            since = worker.proc.log_size()
            stopped = stop_unit(worker)
        finally:
            d.gate.open()  # what it held is answered 503, never delivered
        assert stopped.clean(worker.unit) and stopped.seconds < worker.stop_timeout, (
            stopped,
            worker.proc.log_text(since),
        )
        log = worker.proc.log_text(since)
        assert "Warm shutdown" in log, log
        # Each held batch ended in the stopping worker (booked for a retry), none was dropped.
        assert log.count("beacon.push.send_batch") >= 3, log

        replacement = d.start("beacon-worker-push.service")
        services.append(replacement)
        wait_log_contains(replacement.proc, " ready.", timeout=60)
        wait_until(
            lambda: all(len(pushed_ids(d.push, s)) >= len(acked) for s in subs),
            timeout=60,
            message="pushes held by the stopped worker were lost",
        )
        wait_until(lambda: broker_idle(d.env["REDIS_URL"]), timeout=30, message="tasks remain")
        assert [pushed_ids(d.push, s) for s in subs] == [sorted(acked)] * 3
    finally:
        if sender is not None:
            sender.disconnect()
        results = stop_all([s for s in services if s.proc.returncode is None])
    assert_stopped_in_time(results, [s for s in services if s.unit.name in results])
