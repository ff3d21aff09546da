"""Redelivery of tasks whose worker died, in gevent workers too.

With ``acks_late`` a task stays in Redis's ``unacked`` set until the worker that took it
acknowledges it; kombu puts it back in its queue once it is older than the visibility timeout.
That sweep runs on the event loop timer of prefork workers only: a gevent (or eventlet) worker
polls synchronously and almost never reaches it (celery/celery#4976, kombu#1025). So a
deployment whose workers are all green, or whose prefork workers died too, would never
redeliver the tasks of a killed worker. Green workers therefore run the same sweep (kombu's
own ``restore_visible``, under its own mutex) on a timer of their own, every
``unacked_restore_interval`` seconds.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

log = logging.getLogger(__name__)


class Restorer:
    """Requeues abandoned (unacknowledged, older than the visibility timeout) messages."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._connection: Any = None

    def __call__(self) -> None:
        try:
            if self._connection is None:
                self._connection = self.app.connection_for_write()
            channel = self._connection.default_channel
            channel.qos.restore_visible(num=channel.unacked_restore_limit, interval=1)
        except Exception:  # noqa: BLE001 - the broker may be away; try again next time
            log.warning("could not look for abandoned tasks; retrying", exc_info=True)
            if self._connection is not None:
                self._connection.release()
                self._connection = None


@signals.worker_ready.connect
def _start_restorer(sender: Any = None, **_: Any) -> None:
    consumer = sender
    if consumer is None or not getattr(consumer.pool, "is_green", False):
        return  # prefork workers: kombu's event loop already does it
    options = consumer.app.conf.broker_transport_options or {}
    interval = float(options.get("unacked_restore_interval", 10))
    consumer.timer.call_repeatedly(interval, Restorer(consumer.app))
    log.info("abandoned-task sweep every %.0fs (green pool)", interval)
