"""Requests to addresses that users or integrators chose: push endpoints, webhook URLs.

Such a URL can point anywhere, our own network included, so every domain that calls out goes
through the same guard: ``addresses`` (the URL and host checks, without and with DNS),
``dns`` (lookups in threads of their own under gevent) and ``http`` (pooled connections, one
deadline per request, the connect-time check of the address actually reached).
"""
