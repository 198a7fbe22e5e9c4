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
