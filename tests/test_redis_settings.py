"""REDIS_SENTINELS and REDIS_SENTINEL_MASTER: one URL for every process, and each library's
configuration made from it (config/redis_urls.py). The failover itself is
tests/faults/test_redis_failover.py."""

from __future__ import annotations

import pytest

from config import load_settings
from config.redis_urls import SentinelTarget, celery_broker, sentinel_target

BASE = {"BEACON_ENV_FILE": "", "JWT_SECRET": "x" * 32}


def _url(**env: str) -> str:
    return load_settings({**BASE, **env}).redis_url


def test_plain_redis_url_is_unchanged() -> None:
    assert _url(REDIS_URL="redis://:pw@10.0.0.5:6380/2") == "redis://:pw@10.0.0.5:6380/2"
    assert celery_broker("redis://:pw@10.0.0.5:6380/2") == ("redis://:pw@10.0.0.5:6380/2", {})
    assert sentinel_target("redis://127.0.0.1:6379/0") is None


def test_sentinels_keep_the_database_and_password_of_redis_url() -> None:
    url = _url(
        REDIS_URL="redis://:s3cret@ignored:6379/4",
        REDIS_SENTINELS="10.0.0.1:26379, 10.0.0.2:26380,10.0.0.3:26379",
        REDIS_SENTINEL_MASTER="beacon-main",
    )
    assert (
        url == "redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26380,10.0.0.3:26379/4/beacon-main"
    )
    assert sentinel_target(url) == SentinelTarget(
        [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)],
        "beacon-main",
        4,
        None,
        "s3cret",
    )
    broker, options = celery_broker(url)
    assert broker == (
        "sentinel://:s3cret@10.0.0.1:26379/4;sentinel://:s3cret@10.0.0.2:26380/4;"
        "sentinel://:s3cret@10.0.0.3:26379/4"
    )
    assert options["master_name"] == "beacon-main"
    assert options["sentinel_kwargs"]["socket_timeout"] > 0


def test_the_default_database_is_0() -> None:
    url = _url(REDIS_SENTINELS="127.0.0.1:26379", REDIS_SENTINEL_MASTER="m")
    assert url == "redis+sentinel://127.0.0.1:26379/0/m"
    assert sentinel_target(url).db == 0


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS is not"),
        ({"REDIS_SENTINELS": "127.0.0.1:26379"}, "needs REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINELS": "127.0.0.1:26379", "REDIS_SENTINEL_MASTER": "a/b"}, "letters"),
        ({"REDIS_SENTINELS": "127.0.0.1", "REDIS_SENTINEL_MASTER": "m"}, "host:port"),
        ({"REDIS_SENTINELS": "h:0", "REDIS_SENTINEL_MASTER": "m"}, "host:port"),
        ({"REDIS_SENTINELS": "h:1,", "REDIS_SENTINEL_MASTER": "m"}, "host:port"),
        (
            {
                "REDIS_SENTINELS": "h:1",
                "REDIS_SENTINEL_MASTER": "m",
                "REDIS_URL": "rediss://h:6379/0",
            },
            "TLS",
        ),
        (
            {"REDIS_SENTINELS": "h:1", "REDIS_SENTINEL_MASTER": "m", "REDIS_URL": "redis://h/x"},
            "database must be a number",
        ),
    ],
)
def test_a_wrong_sentinel_setting_is_refused_at_start(env: dict[str, str], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        load_settings({**BASE, **env})


def test_celeryconfig_imports_no_redis_client() -> None:
    """Celery reads celeryconfig before a gevent worker patches the standard library: a module
    that imported redis (and ssl with it) there made every TLS push fail with RecursionError."""
    import subprocess
    import sys
    from pathlib import Path

    probe = "import sys, celeryconfig; print(sorted({'ssl', 'redis'} & set(sys.modules)))"
    env = {"BEACON_ENV_FILE": "", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]", out
