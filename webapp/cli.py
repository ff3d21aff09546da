"""``flask --app wsgi beacon ...``: administration commands.

Scripts and tests parse the output, so each command prints exactly the value asked for.
"""

from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from webapp.admin import keys
from webapp.admin.provisioning import set_email
from webapp.auth import issue_token
from webapp.errors import BeaconError
from webapp.extensions import db
from webapp.messaging.topics import create_topic
from webapp.models import User
from webapp.platform.validation import parse_email

beacon = AppGroup("beacon", help="Beacon administration.")


def _fail(message: str) -> None:
    raise click.ClickException(message)


def _email(value: str | None) -> str | None:
    try:
        return parse_email(value)
    except BeaconError as exc:
        raise click.BadParameter(exc.message) from None


@beacon.command("create-user")
@click.argument("username")
@click.option("--display-name", default=None, help="Name shown to other users.")
@click.option("--email", default=None, help="Where missed-message digests go.")
def create_user(username: str, display_name: str | None, email: str | None) -> None:
    """Create a user and print its id."""
    if not 1 <= len(username) <= 64 or any(c.isspace() for c in username):
        _fail("username must be 1-64 characters without spaces")
    user = User(username=username, display_name=display_name, email=_email(email))
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        _fail(f"user {username!r} already exists")
    click.echo(str(user.id))


@beacon.command("create-topic")
@click.argument("channel")
@click.argument("topic")
@click.option("--member", "members", multiple=True, help="Username to add (repeatable).")
def create_topic_cmd(channel: str, topic: str, members: tuple[str, ...]) -> None:
    """Create the channel if needed and the topic; print ``<channel_id> <topic_id>``."""
    try:
        ch, tp = create_topic(channel, topic, list(members))
    except BeaconError as exc:
        db.session.rollback()
        _fail(exc.message)
    click.echo(f"{ch.id} {tp.id}")


@beacon.command("set-email")
@click.argument("username")
@click.argument("address", required=False)
def set_email_cmd(username: str, address: str | None) -> None:
    """Set (or, without ADDRESS, remove) the user's email address; print it."""
    user = _user(username)
    set_email(user, _email(address))
    db.session.commit()
    click.echo(user.email or "-")


def _user(username: str) -> User:
    user = db.session.execute(
        select(User).where(User.username == username, User.deleted_at.is_(None))
    ).scalar_one_or_none()
    if user is None:
        _fail(f"no user named {username!r}")
    return user


@beacon.command("token")
@click.argument("username")
@click.option("--ttl", type=click.IntRange(min=1), default=None, help="Lifetime in seconds.")
def token(username: str, ttl: int | None) -> None:
    """Print a signed JWT for the user."""
    user = _user(username)
    click.echo(issue_token(current_app.extensions["beacon_settings"], user.id, ttl))


@beacon.command("create-api-key")
@click.argument("name")
@click.option(
    "--scope",
    type=click.Choice(["admin", "publish"]),
    default="admin",
    show_default=True,
    help="admin: every /api/admin route; publish: only POST /api/admin/messages.",
)
def create_api_key(name: str, scope: str) -> None:
    """Create a service key for the integration API and print it (shown only this once)."""
    try:
        click.echo(keys.create(name, scope))
    except BeaconError as exc:
        _fail(exc.message)


@beacon.command("revoke-api-key")
@click.argument("name")
def revoke_api_key(name: str) -> None:
    """Delete a service key: requests with it are refused from now on."""
    if not keys.revoke(name):
        _fail(f"no key named {name!r}")
    click.echo(f"revoked {name}")


@beacon.command("list-api-keys")
def list_api_keys() -> None:
    """One line per key: name, scope, prefix, created, last used (never the key)."""
    for key in keys.list_keys():
        click.echo(
            f"{key['name']}\t{key['scope']}\t{key['prefix']}\t{key['created_at']}"
            f"\t{key['last_used_at'] or '-'}"
        )


def register(app: Flask) -> None:
    app.cli.add_command(beacon)
