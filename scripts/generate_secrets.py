"""Create the secrets Beacon needs in the untracked ``.env`` (never overwriting existing ones).

Writes JWT_SECRET (HS256), EMAIL_LINK_SECRET (signs email unsubscribe links) and a VAPID key
pair (VAPID_PRIVATE_KEY / VAPID_PUBLIC_KEY) when missing, and prints the VAPID public key: the
``applicationServerKey`` browsers subscribe with. ``--rotate-vapid`` replaces the VAPID pair
(existing browser subscriptions then stop working).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dotenv import dotenv_values, set_key  # noqa: E402

from config.settings import ENV_FILE  # noqa: E402
from webapp.delivery.channels.webpush.vapid import generate_vapid_keypair  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env-file", type=Path, default=ENV_FILE)
    parser.add_argument("--rotate-vapid", action="store_true", help="replace the VAPID key pair")
    args = parser.parse_args(argv)

    env_file: Path = args.env_file
    if not env_file.exists():
        env_file.touch(mode=0o600)
    current = {k: v for k, v in dotenv_values(env_file).items() if v}

    def known(name: str) -> bool:
        return bool(current.get(name) or os.environ.get(name))

    if not known("JWT_SECRET"):
        set_key(str(env_file), "JWT_SECRET", secrets.token_urlsafe(48), quote_mode="never")
        print(f"wrote JWT_SECRET to {env_file}", file=sys.stderr)
    if not known("EMAIL_LINK_SECRET"):
        set_key(str(env_file), "EMAIL_LINK_SECRET", secrets.token_urlsafe(48), quote_mode="never")
        print(f"wrote EMAIL_LINK_SECRET to {env_file}", file=sys.stderr)
    if args.rotate_vapid or not (known("VAPID_PRIVATE_KEY") and known("VAPID_PUBLIC_KEY")):
        private_key, public_key = generate_vapid_keypair()
        set_key(str(env_file), "VAPID_PRIVATE_KEY", private_key, quote_mode="never")
        set_key(str(env_file), "VAPID_PUBLIC_KEY", public_key, quote_mode="never")
        print(f"wrote a new VAPID key pair to {env_file}", file=sys.stderr)
    os.chmod(env_file, 0o600)
    print(dotenv_values(env_file).get("VAPID_PUBLIC_KEY") or os.environ.get("VAPID_PUBLIC_KEY", ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
