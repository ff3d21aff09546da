"""Web Push throughput: Beacon's PushSender against naive per-call ``pywebpush.webpush()``.

Both send N real pushes (aes128gcm + VAPID over HTTP on loopback) to the local push service
(tests/pushservice), which verifies the VAPID JWT and decrypts every message; a run only counts
if the push service accepted every push. The push service runs in a child process by default so
it does not share the sender's GIL. Also measured: encryption alone, the floor no sender can go
below: a fresh ephemeral key, ECDH, HKDF and AES-GCM with the cheapest correct implementation
we have (``encrypt_aes128gcm``, the sender's own; ``http_ece.encrypt`` is shown for reference).
Each figure is the best of ``--repeat`` runs, since other work on the machine only ever makes a
run slower.

    .venv/bin/python bench/push_throughput.py [--n 2000] [--subs 50] [--workers 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import http_ece  # noqa: E402
import pywebpush  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from tests.pushservice import (  # noqa: E402
    PushServiceClient,
    running_push_service,
    running_push_service_process,
)
from webapp.delivery.channels.webpush.ece import encrypt_aes128gcm  # noqa: E402
from webapp.delivery.channels.webpush.sender import PushSender  # noqa: E402
from webapp.delivery.channels.webpush.subscription import SubscriptionKeys  # noqa: E402
from webapp.delivery.channels.webpush.vapid import generate_vapid_keypair  # noqa: E402

SUBJECT = "mailto:bench@example.com"
TTL = 60


def payload(i: int) -> bytes:
    """About the size of Beacon's real notification JSON (~330 bytes)."""
    return json.dumps(
        {
            "type": "message",
            "title": "Ada Lovelace in #engineering / release planning",
            "body": f"Message {i}: " + "the quick brown fox jumps over the lazy dog " * 2,
            "topic_id": "6f1c2a9e-7d7b-4a53-9a59-1f4a8c1e2b3d",
            "room_id": "0b7e1c55-2f5c-4c1e-8c2b-9d7a3e6f1a20",
            "message_id": f"a3d5c7e9-{i:04d}-4b6d-8f1a-2c4e6a8b0d1f",
            "url": "https://beacon.example.com/rooms/0b7e1c55/topics/6f1c2a9e",
        }
    ).encode()


def _unb64(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _child_cpu(pid: int | None) -> float | None:
    """CPU seconds used so far by the push service process (Linux only)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _delivered(client: PushServiceClient) -> int:
    return sum(s["delivered"] for s in client.stats()["subscriptions"].values())


@dataclass
class Run:
    wall: float  # seconds per push
    cpu: float  # this process's CPU seconds per push
    service_cpu: float | None  # the push service's CPU seconds per push


def measure(
    name: str, client: PushServiceClient, n: int, repeat: int, run: Callable[[], None]
) -> Run:
    """Best of ``repeat`` runs; checks that the push service accepted all ``n`` pushes."""
    best: Run | None = None
    for _ in range(repeat):
        before = _delivered(client)
        service_before = _child_cpu(client.pid)
        cpu_before = time.process_time()
        start = time.perf_counter()
        run()
        wall = (time.perf_counter() - start) / n
        cpu = (time.process_time() - cpu_before) / n
        service_after = _child_cpu(client.pid)
        service = (
            None
            if service_before is None or service_after is None
            else (service_after - service_before) / n
        )
        accepted = _delivered(client) - before
        if accepted != n:
            raise SystemExit(f"{name}: the push service accepted {accepted} of {n} pushes")
        if best is None or wall < best.wall:
            best = Run(wall, cpu, service)
    assert best is not None
    return best


def _http_ece(
    payload: bytes, public: ec.EllipticCurvePublicKey, _point: bytes, auth: bytes
) -> bytes:
    return http_ece.encrypt(
        payload,
        private_key=ec.generate_private_key(ec.SECP256R1()),
        dh=public,
        auth_secret=auth,
        version="aes128gcm",
    )


def encryption_time(
    subs: list[SubscriptionKeys],
    n: int,
    repeat: int,
    encrypt: Callable[[bytes, ec.EllipticCurvePublicKey, bytes, bytes], bytes],
) -> float:
    """Seconds per push for encryption alone (keys decoded beforehand), best of ``repeat``."""
    keys = [
        (
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _unb64(s.p256dh)),
            _unb64(s.p256dh),
            _unb64(s.auth),
        )
        for s in subs
    ]
    payloads = [payload(i) for i in range(n)]
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for i in range(n):
            encrypt(payloads[i], *keys[i % len(keys)])
        best = min(best, (time.perf_counter() - start) / n)
    return best


def naive_loop(private_key: str, subs: list[dict], payloads: list[bytes]) -> None:
    """One ``webpush()`` call per push, as many apps do: new key parse, JWT, session, socket."""
    for i, data in enumerate(payloads):
        pywebpush.webpush(
            subscription_info=subs[i % len(subs)],
            data=data.decode(),
            vapid_private_key=private_key,
            vapid_claims={"sub": SUBJECT},
            ttl=TTL,
            timeout=10,
        )


@contextlib.contextmanager
def push_service(in_process: bool) -> Iterator[PushServiceClient]:
    if in_process:
        with running_push_service() as client:
            yield client
    else:
        with running_push_service_process() as client:
            yield client


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Web Push sender throughput")
    parser.add_argument("--n", type=int, default=2000, help="pushes per measured run")
    parser.add_argument("--subs", type=int, default=50, help="distinct subscriptions, cycled")
    parser.add_argument("--workers", type=int, default=4, help="send_many thread pool size")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (best is kept)")
    parser.add_argument("--in-process", action="store_true", help="push service in this process")
    parser.add_argument("--skip-naive", action="store_true", help="skip the pywebpush loop")
    args = parser.parse_args(argv)
    n, repeat = args.n, max(1, args.repeat)

    private_key, _ = generate_vapid_keypair()
    with push_service(args.in_process) as client:
        raw = [client.new_subscription() for _ in range(args.subs)]
        subs = [
            SubscriptionKeys(s["endpoint"], s["keys"]["p256dh"], s["keys"]["auth"]) for s in raw
        ]
        naive_subs = [{"endpoint": s["endpoint"], "keys": dict(s["keys"])} for s in raw]
        messages = [(subs[i % len(subs)], payload(i)) for i in range(n)]
        where = "in this process" if args.in_process else "in a child process"
        print(
            f"push service {client.base_url} ({where}); {args.subs} subscriptions, N={n}, "
            f"best of {repeat}; {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
        )

        # The floor is the cheapest correct encryption we have: the sender's own (cryptography
        # primitives directly); http_ece.encrypt, which the sender used before, is shown too.
        floor = encryption_time(subs, n, repeat, encrypt_aes128gcm)
        ece = encryption_time(subs, n, repeat, _http_ece)
        with PushSender(private_key, SUBJECT, timeout=10, concurrency=args.workers) as sender:
            sender.send_many(messages[:200], ttl=TTL)  # warm up: connections, key and JWT caches
            runs = {
                "Beacon send() loop": measure(
                    "send",
                    client,
                    n,
                    repeat,
                    lambda: [sender.send(s, p, ttl=TTL) for s, p in messages],
                ),
                f"Beacon send_many({args.workers})": measure(
                    "send_many", client, n, repeat, lambda: sender.send_many(messages, ttl=TTL)
                ),
            }
        if not args.skip_naive:
            payloads = [p for _, p in messages]
            runs["naive pywebpush.webpush()"] = measure(
                "naive", client, n, repeat, lambda: naive_loop(private_key, naive_subs, payloads)
            )

    naive = runs.get("naive pywebpush.webpush()")
    print(f"{'':28} {'pushes/s':>9} {'us/push':>8} {'sender CPU':>11} {'service CPU':>12}")
    print(f"{'encryption floor':28} {1 / floor:9.0f} {floor * 1e6:8.1f} {floor * 1e6:11.1f}")
    print(f"{'(http_ece.encrypt)':28} {1 / ece:9.0f} {ece * 1e6:8.1f} {ece * 1e6:11.1f}")
    for name, run in runs.items():
        service = "" if run.service_cpu is None else f"{run.service_cpu * 1e6:12.1f}"
        print(
            f"{name:28} {1 / run.wall:9.0f} {run.wall * 1e6:8.1f} {run.cpu * 1e6:11.1f} {service}"
        )
    print("(CPU columns: microseconds of CPU per push in the sender / push service process)")
    if args.in_process:
        print("(in-process: the sender CPU column includes the push service's work)")
    for name, run in runs.items():
        if run is naive:
            continue
        versus = ""
        if naive:
            versus = f"; {naive.wall / run.wall:.1f}x naive in wall time"
            if naive.service_cpu is not None and run.service_cpu is not None:
                both = (naive.cpu + naive.service_cpu) / (run.cpu + run.service_cpu)
                versus += f", {both:.1f}x in sender + service CPU"
        print(
            f"{name}: {run.wall / floor:.1f}x the encryption floor in wall time "
            f"({run.cpu / floor:.1f}x in sender CPU){versus}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
