"""Fake third-party services (APNs, FCM) run as real processes for tests."""
