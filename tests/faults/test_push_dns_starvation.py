"""Slow DNS answers for some push endpoints must not delay other users' pushes (issue 14,
suspicion 4).

The push worker runs under gevent (``-P gevent``) and checks each endpoint's host with
``socket.getaddrinfo`` right before sending (``addresses.check_target``). gevent's default
resolver (``GEVENT_RESOLVER`` unset: ``thread``) runs every ``getaddrinfo`` of the process in
the hub's threadpool, 10 threads (``Hub.threadpool_size``), IP literals included
(``socket.create_connection("127.0.0.1", ...)`` resolves too: Redis, the broker, the push
service's HTTP connections). A lookup that waits on a slow name server holds one thread for
as long as the resolver waits (glibc: 5 s per try, 2 tries, per name server).

What is measured here, in a gevent-patched subprocess like the worker: the C ``getaddrinfo``
the thread resolver calls is replaced, for names under ``.slow.test`` only, by one that blocks
its thread for ``SLOW`` seconds (what a slow name server does to that thread); then the host
check of another user's endpoint (a name that answers at once) and a TCP connect to
127.0.0.1 are timed while 4 (fewer than the hub pool's threads) and then 12 such lookups are in
flight. No system file is touched: a real slow name server would need /etc/resolv.conf.

Before endpoint lookups had threads of their own (``webapp/platform/outbound/dns.py``),
12 slow ones delayed both by the full 3 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.conftest import ROOT

SLOW = 3.0
BOUND = 1.0  # seconds another host's check and a local connect may take meanwhile

EXPERIMENT = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import json
    import socket
    import sys
    import threading

    import gevent
    import gevent.resolver.thread as thread_resolver

    from webapp.platform.outbound import dns
    from webapp.platform.outbound.addresses import TargetError, check_target

    slow, in_flight = float(sys.argv[1]), int(sys.argv[2])
    real_sleep = monkey.get_original("time", "sleep")
    real_socket = thread_resolver._socket
    entered = [0]
    lock = monkey.get_original("threading", "Lock")()

    class SlowNameServer:
        def __getattr__(self, name):
            return getattr(real_socket, name)

        def getaddrinfo(self, host, *args, **kwargs):
            if isinstance(host, str) and host.endswith(".slow.test"):
                with lock:
                    entered[0] += 1
                real_sleep(slow)  # the thread waits on the name server
                raise real_socket.gaierror(-3, "Temporary failure in name resolution")
            if host == "push.fast.test":
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 443))]
            return real_socket.getaddrinfo(host, *args, **kwargs)

    thread_resolver._socket = SlowNameServer()  # the process's own lookups (the hub's pool)
    dns.system_getaddrinfo = thread_resolver._socket.getaddrinfo  # endpoint lookups
    resolver = type(gevent.get_hub().resolver).__module__
    pool_size = gevent.get_hub().threadpool.maxsize

    def slow_check(i):
        try:
            check_target(f"https://h{i}.slow.test/push/{i}", ())
        except TargetError as exc:
            return exc.code
        return "sent"

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]

    slow_ones = [gevent.spawn(slow_check, i) for i in range(in_flight)]
    while entered[0] < min(in_flight, pool_size):  # the lookups hold their threads now
        gevent.sleep(0.001)
    clock = monkey.get_original("time", "monotonic")

    def timed(step):
        start = clock()
        step()
        return clock() - start

    fast_check, local_connect = (
        g.get()
        for g in [  # at the same moment
            gevent.spawn(timed, lambda: check_target("https://push.fast.test/p", ())),
            gevent.spawn(
                timed, lambda: socket.create_connection(("127.0.0.1", port), timeout=30).close()
            ),
        ]
    )
    gevent.joinall(slow_ones)
    print(json.dumps({
        "resolver": resolver,
        "pool_size": pool_size,
        "fast_check": round(fast_check, 3),
        "local_connect": round(local_connect, 3),
        "slow_outcomes": sorted({g.value for g in slow_ones}),
    }))
    """
)


def run_experiment(in_flight: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", EXPERIMENT, str(SLOW), str(in_flight)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "BEACON_ENV_FILE": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_slow_dns_for_some_endpoints_does_not_delay_others(reliability):
    results = {n: run_experiment(n) for n in (4, 12)}
    observed = {
        f"{n} slow lookups in flight: other host's check {r['fast_check']} s, local connect "
        f"{r['local_connect']} s ({r['resolver']}, {r['pool_size']} threads)": 1
        for n, r in results.items()
    }
    reliability.record(
        "faults",
        f"push endpoint hosts whose DNS answers after {SLOW:.0f} s, 4 then 12 lookups at once "
        "(gevent push worker; endpoint lookups in threads of their own)",
        expected=f"another host's check and a local connect within {BOUND:.0f} s",
        observed=observed,
        count=2,
    )
    for n, r in results.items():
        assert r["slow_outcomes"] == ["dns_error"], r
        assert r["fast_check"] < BOUND and r["local_connect"] < BOUND, (n, r)
