"""The `megamovie` command line. Settings come from the environment, flags override them."""

from __future__ import annotations

import logging

import click

from portal.settings import Settings, SettingsError


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings.from_env(**overrides)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Mega Movie: a film portal on encrypted storage.

    Configuration is read from MEGAMOVIE_* environment variables (see docs/operations.md);
    with none set, everything lives in ./megamovie-data.
    """


@main.command()
@click.option("--host", default=None, help="Interface to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default 8000).")
def serve(host: str | None, port: int | None) -> None:
    """Run the portal: web app and in-process transcode workers."""
    import uvicorn

    from portal.app import create_app

    settings = load_settings(host=host, port=port)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s %(message)s"
    )
    app = create_app(settings)
    click.echo(
        f"Mega Movie on http://{settings.host}:{settings.port}/ (data in {settings.data_dir})"
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        proxy_headers=False,
        server_header=False,
    )


@main.group()
def users() -> None:
    """Manage accounts (admins are made only here, never by sign-up)."""


@users.command("create")
@click.argument("email")
@click.option(
    "--role",
    type=click.Choice(["viewer", "creator", "admin"]),
    default="viewer",
    show_default=True,
)
@click.option("--name", "display_name", default=None, help="Name shown on the channel.")
def users_create(email: str, role: str, display_name: str | None) -> None:
    """Create an account. The password is read from stdin (prompted for on a terminal), so it
    never appears in the shell history or the process list."""
    import asyncio
    import sys

    from portal.accounts import create_user
    from portal.app import prepare_data_dir
    from portal.db import create_engine, create_schema
    from portal.errors import PortalError

    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    settings = load_settings()

    async def run() -> str:
        prepare_data_dir(settings)
        engine = create_engine(settings.database_url)
        try:
            await create_schema(engine)
            user = await create_user(
                engine,
                settings,
                email=email,
                password=password,
                role=role,
                display_name=display_name,
            )
        finally:
            await engine.dispose()
        return f"created {user.role} {user.email} (id {user.id})"

    try:
        click.echo(asyncio.run(run()))
    except PortalError as exc:
        raise click.ClickException(exc.message) from None


@main.group()
def keys() -> None:
    """Master keys of the vault: status and rotation."""


def _run_keys(action: str) -> None:
    import asyncio

    from portal.app import prepare_data_dir
    from portal.db import create_engine, create_schema
    from portal.errors import PortalError
    from portal.vault.rotation import key_status_lines, rotate_keys

    settings = load_settings()
    command = {"rotate": rotate_keys, "status": key_status_lines}[action]

    async def run() -> list[str]:
        prepare_data_dir(settings)
        engine = create_engine(settings.database_url)
        try:
            await create_schema(engine)
            return await command(settings, engine)
        finally:
            await engine.dispose()

    try:
        lines = asyncio.run(run())
    except PortalError as exc:
        raise click.ClickException(exc.message) from None
    for line in lines:
        click.echo(line)


@keys.command("status")
def keys_status() -> None:
    """Show the master keys and how many data keys each wraps."""
    _run_keys("status")


@keys.command("rotate")
def keys_rotate() -> None:
    """Add a master key (key file) and re-wrap every data key under the newest key."""
    _run_keys("rotate")


@keys.command("generate")
def keys_generate() -> None:
    """Print a new `id:base64key` entry to append to MEGAMOVIE_MASTER_KEYS (keep it secret)."""
    from portal.vault.keyring import generate_entry

    click.echo(generate_entry())
