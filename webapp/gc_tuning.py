"""The cyclic garbage collector of a web process that holds thousands of connections.

CPython's collector stops the whole process while it runs, and under gevent that is every
connection at once. With CPython's defaults (a young collection every 700 net allocations)
the web process at 1,000 clients and 20 messages/s ran about 80 collections in 20 s, and a full
one whenever enough objects had survived into the old generation: each full collection walks
the entire heap (the imported libraries and every connection's objects) and took 67-180 ms
there, a stall every client sees as latency (``bench/load.py``; figures in bench/README.md).

Two standard remedies, applied once after the app is built:

- ``gc.freeze()`` moves everything start-up created (modules, SQLAlchemy mappers, Celery and
  Socket.IO machinery: about 130,000 objects) to a permanent generation that collections skip.
  None of it becomes garbage while the process runs.
- A young-generation threshold of 20,000: most objects a request or an event creates are
  freed by reference counting long before that, so far fewer of them are still alive at a
  collection and get promoted, and the old generation grows (and is walked in full) far less
  often. Cyclic garbage waits longer, a bounded few MB at most.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000


def tune() -> None:
    """Freeze start-up's objects (after collecting its garbage) and raise the young threshold."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
