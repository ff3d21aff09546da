"""Web entry point. gevent must patch the standard library before anything else is imported."""

from gevent import monkey

monkey.patch_all()

from webapp import create_app, gc_tuning  # noqa: E402
from webapp.extensions import socketio  # noqa: E402

app = create_app()
if app.extensions["beacon_settings"].gc_tuning:
    gc_tuning.tune()

if __name__ == "__main__":
    settings = app.extensions["beacon_settings"]
    socketio.run(app, host=settings.host, port=settings.port, log_output=False)
