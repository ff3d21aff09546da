"""Web entry point. gevent must patch the standard library before anything else is imported."""

from gevent import monkey

monkey.patch_all()

from config import load_settings  # noqa: E402
from webapp import create_app, gc_tuning  # noqa: E402
from webapp.extensions import socketio  # noqa: E402

try:
    _settings = load_settings()
except ValueError as exc:  # a setting the loader refuses: the reason, not a traceback
    raise SystemExit(f"beacon: refusing to start: {exc}") from None
app = create_app(_settings)
if app.extensions["beacon_settings"].gc_tuning:
    gc_tuning.tune()

if __name__ == "__main__":
    settings = app.extensions["beacon_settings"]
    socketio.run(app, host=settings.host, port=settings.port, log_output=False)
