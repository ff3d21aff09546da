"""DEV_LOGIN on an address other than loopback, or behind a reverse proxy: the web process
refuses to start.

``DEV_LOGIN=1`` hands a token for any user to whoever asks (``/api/dev/token``); it exists for
a demo on the developer's own machine. Listening on anything but loopback with it on would
give every account to the network, so the settings loader refuses the combination and the
web process exits with the reason instead of warning in a log nobody reads.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from config import load_settings
from tests.conftest import PYTHON, ROOT, base_env
from tests.harness.ports import free_port

REFUSED_HOSTS = ["0.0.0.0", "::", "192.168.1.20", "10.0.0.5", "beacon.example.com"]
LOOPBACK_HOSTS = ["127.0.0.1", "127.0.0.2", "::1", "localhost", "LOCALHOST", ""]


def test_web_refuses_to_start_with_dev_login_on_all_interfaces(run_dir, reliability) -> None:
    port = free_port()
    env = base_env(
        f"sqlite:///{run_dir / 'dev_login_refused.db'}",
        "redis://127.0.0.1:1/0",  # never reached: the refusal comes first
        DEV_LOGIN="1",
        HOST="0.0.0.0",
        PORT=str(port),
    )
    try:
        # The refusal takes the imports' time; a web that starts would serve until killed.
        result = subprocess.run(
            [PYTHON, "wsgi.py"],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("wsgi.py kept running with DEV_LOGIN=1 and HOST=0.0.0.0")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "DEV_LOGIN" in output and "0.0.0.0" in output and "loopback" in output, output
    assert "Traceback" not in output, output  # one clear line, not a stack trace
    reason = output.strip().splitlines()[-1]
    reliability.record(
        "tokens",
        "DEV_LOGIN=1 (a token for anyone) with HOST=0.0.0.0",
        expected="the web process refuses to start: non-zero exit, the reason in one line",
        observed=f"exit {result.returncode}: {reason}",
    )


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_settings_refuse_dev_login_off_loopback(host: str) -> None:
    with pytest.raises(ValueError, match="DEV_LOGIN"):
        load_settings({"DEV_LOGIN": "1", "HOST": host})
    assert load_settings({"DEV_LOGIN": "0", "HOST": host}).host == host  # off: any address


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_settings_accept_dev_login_on_loopback(host: str) -> None:
    settings = load_settings({"DEV_LOGIN": "1", "HOST": host})
    assert settings.dev_login is True


def test_settings_refuse_dev_login_behind_a_reverse_proxy() -> None:
    """Behind nginx the web process listens on loopback, yet the proxy serves the world."""
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        load_settings({"DEV_LOGIN": "1", "HOST": "127.0.0.1", "TRUSTED_PROXIES": "1"})
    assert load_settings({"DEV_LOGIN": "0", "TRUSTED_PROXIES": "1"}).trusted_proxies == 1
