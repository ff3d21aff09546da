"""``/api/admin``: the integration API, for a product's backend with a service key.

Thin: each route parses its input into typed values and calls ``webapp.admin``.
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("admin", __name__, url_prefix="/api/admin")
