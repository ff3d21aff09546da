"""Messaging: topics and memberships, posting and reading messages, unread counts, and the
reconciliation of a message's lost work."""
