"""``/metrics`` in the Prometheus text format (restrict it at the load balancer)."""

from __future__ import annotations

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST

from webapp import metrics
from webapp.platform import context
from webapp.redis_client import get_redis

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    body = metrics.render(get_redis(context.settings().redis_url))
    return Response(body, mimetype=CONTENT_TYPE_LATEST)
