"""Tests of the deployment files in deploy/ (nginx, systemd), run against the real programs."""
