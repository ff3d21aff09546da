"""Notifying members who are not looking: planning (who, rules, coalescing), send batches
and their bookkeeping (markers, history, cleanup), and the channels that reach devices.

The web tier only enqueues (``webapp.platform.queue``); the push workers run this package.
"""
