"""``flask --app wsgi beacon ...``: administration commands.

Scripts and tests parse the output, so each command prints exactly the value asked for.
"""

from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from webapp.auth import issue_token
from webapp.errors import BeaconError
from webapp.extensions import db
from webapp.models import User
from webapp.services.topics import create_topic

beacon = AppGroup("beacon", help="Beacon administration.")


def _fail(message: str) -> None:
    raise click.ClickException(message)


@beacon.command("create-user")
@click.argument("username")
@click.option("--display-name", default=None, help="Name shown to other users.")
def create_user(username: str, display_name: str | None) -> None:
    """Create a user and print its id."""
    if not 1 <= len(username) <= 64 or any(c.isspace() for c in username):
        _fail("username must be 1-64 characters without spaces")
    user = User(username=username, display_name=display_name)
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


@beacon.command("token")
@click.argument("username")
@click.option("--ttl", type=click.IntRange(min=1), default=None, help="Lifetime in seconds.")
def token(username: str, ttl: int | None) -> None:
    """Print a signed JWT for the user."""
    user = db.session.execute(select(User).where(User.username == username)).scalar_one_or_none()
    if user is None:
        _fail(f"no user named {username!r}")
    click.echo(issue_token(current_app.extensions["beacon_settings"], user.id, ttl))


def register(app: Flask) -> None:
    app.cli.add_command(beacon)
