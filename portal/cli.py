"""The `megamovie` command line. Settings come from the environment, flags override them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from portal.settings import Settings, SettingsError


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings.from_env(None, **overrides)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s %(message)s"
    )
    # Alembic narrates every plugin and migration step at INFO; only its problems matter here.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _metrics_dir(settings: Settings) -> None:
    """prometheus-client's multiprocess mode for this process, in MEGAMOVIE_METRICS_DIR
    unless PROMETHEUS_MULTIPROC_DIR is set. prometheus-client reads the variable once, when
    it is first imported, so this runs before anything imports it (portal.metrics)."""
    import os

    directory = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(settings.metrics_dir))
    from portal.metrics import prune_metrics_dir

    prune_metrics_dir(Path(directory))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Mega Movie: a film portal on encrypted storage.

    Configuration is read from MEGAMOVIE_* environment variables (see docs/operations.md);
    with none set, everything lives in ./megamovie-data.
    """


@main.command()
@click.option("--host", default=None, help="Interface to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default 8000).")
@click.option("--demo", is_flag=True, help="Fill an empty catalog with a few generated films.")
def serve(host: str | None, port: int | None, demo: bool) -> None:
    """Run the portal: web app and in-process transcode workers."""
    settings = load_settings(host=host, port=port)
    configure_logging(settings)
    _metrics_dir(settings)
    import uvicorn

    from portal.app import create_app
    from portal.server import server_config

    if demo:
        from portal.demo import seed_demo

        queued = len(_with_services(settings, seed_demo))
        if queued:
            click.echo(f"queued {queued} demo films; they appear as the workers finish them")
    app = create_app(settings)
    click.echo(
        f"Mega Movie on http://{settings.host}:{settings.port}/ (data in {settings.data_dir})"
    )
    # Header and keep-alive time limits, and a bound on request heads: see portal/server.py.
    uvicorn.Server(server_config(app, settings)).run()


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
    from portal.errors import EXPECTED_ERRORS
    from portal.services import open_database

    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    settings = load_settings()

    async def run() -> str:
        async with open_database(settings) as engine:
            user = await create_user(
                engine,
                settings,
                email=email,
                password=password,
                role=role,
                display_name=display_name,
            )
        return f"created {user.role} {user.email} (id {user.id})"

    try:
        click.echo(asyncio.run(run()))
    except EXPECTED_ERRORS as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def keys() -> None:
    """Master keys of the vault: status and rotation."""


def _run_keys(action: str) -> None:
    import asyncio

    from portal.errors import EXPECTED_ERRORS
    from portal.services import open_database, vault_config
    from portal.vault.rotation import key_status_lines, rotate_keys

    settings = load_settings()
    command = {"rotate": rotate_keys, "status": key_status_lines}[action]

    async def run() -> list[str]:
        async with open_database(settings) as engine:
            return await command(vault_config(settings), engine)

    try:
        lines = asyncio.run(run())
    except EXPECTED_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
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


# -- the media pipeline ---------------------------------------------------------------


def _with_services(settings: Settings, action: Any, *args: Any) -> Any:
    """Run `await action(services, *args)` with the engine, vault and queue open."""
    import asyncio

    from portal.errors import EXPECTED_ERRORS
    from portal.services import open_services

    async def run() -> Any:
        async with open_services(settings) as services:
            return await action(services, *args)

    try:
        return asyncio.run(run())
    except EXPECTED_ERRORS as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--count", type=int, default=None, help="Workers (default MEGAMOVIE_WORKERS).")
def worker(count: int | None) -> None:
    """Run transcode workers outside the web process, until Ctrl-C."""
    settings = load_settings()
    configure_logging(settings)
    _metrics_dir(settings)
    from portal.worker import run_workers

    workers = count if count is not None else max(1, settings.workers)
    click.echo(f"running {workers} worker(s); Ctrl-C stops them")
    _with_services(settings, run_workers, workers)
    click.echo("stopped; unfinished jobs went back to the queue")


@main.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--title", required=True, help="Title shown in the catalog.")
@click.option("--creator", "creator_email", required=True, help="Email of the creator account.")
@click.option("--description", default="", help="Description shown on the watch page.")
@click.option("--tags", default="", help="Space- or comma-separated tags.")
@click.option("--wait", is_flag=True, help="Process it here, showing progress, until done.")
def import_(
    file: Path, title: str, creator_email: str, description: str, tags: str, wait: bool
) -> None:
    """Import a local video file as CREATOR's film; prints the video id.

    With --wait, a worker runs in this process and the command exits non-zero with the
    reason if the file cannot be processed."""
    from portal.worker import import_video, wait_for_video

    settings = load_settings()
    metadata = {"title": title, "description": description, "tags": tags}
    video_id = _with_services(settings, import_video, file, creator_email, metadata)
    click.echo(video_id)
    if not wait:
        return
    import sys

    with click.progressbar(length=1000, label="processing", file=sys.stderr) as bar:
        done = 0

        def show(fraction: float) -> None:
            nonlocal done
            bar.update(int(fraction * 1000) - done)
            done = int(fraction * 1000)

        status, error = _with_services(settings, wait_for_video, video_id, show)
    if status != "ready":
        raise click.ClickException(f"{video_id} failed: {error}")
    click.echo(f"{video_id} is ready", err=True)


@main.group()
def videos() -> None:
    """Manage videos."""


@videos.command("delete")
@click.argument("video_id")
def videos_delete(video_id: str) -> None:
    """Delete a video for good: its data key is destroyed, then its objects and rows."""
    from portal.worker import remove_video

    _with_services(load_settings(), remove_video, video_id)
    click.echo(f"deleted {video_id}")


# -- money ------------------------------------------------------------------------------------


@main.group()
def ledger() -> None:
    """The books: every movement of money, in balanced double-entry postings."""


@ledger.command("verify")
def ledger_verify() -> None:
    """Check that every posting balances and every balance is the sum of its entries.

    Exits 1 and prints what does not add up, with the entries of each unbalanced posting."""
    from portal.ledger import verify

    async def check(services: Any) -> Any:
        return await verify(services.engine)

    problems = _with_services(load_settings(), check)
    if not problems:
        click.echo("The books balance: every posting sums to zero and every balance matches.")
        return
    for problem in problems:
        click.echo(problem.message)
        for entry in problem.entries:
            click.echo(f"    {entry.account:<40} {entry.amount:>16} {entry.currency}")
    raise SystemExit(1)


@main.group()
def payouts() -> None:
    """Pay creators what they earned, month by month."""


@payouts.command("run")
@click.option("--period", required=True, metavar="YYYY-MM", help="The month to close (UTC).")
def payouts_run(period: str) -> None:
    """Close PERIOD: share pass fees by watch time, pay every creator what they are owed and
    write their statements. Running it again for a closed period changes nothing. The
    current month may be closed early: it settles everything up to now."""
    from portal.commerce import Commerce

    async def run(services: Any) -> list[str]:
        done = await Commerce(services).run_payouts(period)
        return done.report()

    for line in _with_services(load_settings(), run):
        click.echo(line)


@main.group()
def purchases() -> None:
    """Purchases and rentals."""


@purchases.command("refund")
@click.argument("purchase_id")
def purchases_refund(purchase_id: str) -> None:
    """Refund a purchase or rental: its postings are reversed exactly, the film leaves the
    buyer's library. Refunding twice changes nothing."""
    from portal.commerce import Commerce

    async def refund(services: Any) -> tuple[Any, bool]:
        return await Commerce(services).refund(purchase_id)

    refunded, done = _with_services(load_settings(), refund)
    if done:
        click.echo(f"refunded {refunded.price} to the wallet of user {refunded.user_id}")
    else:
        click.echo(
            f"{purchase_id} was already refunded on {refunded.refunded_at:%Y-%m-%d %H:%M} UTC"
        )


@main.group()
def payments() -> None:
    """Top-ups taken through a payment provider that answers later (Stripe)."""


@payments.command("reconcile")
@click.option(
    "--older-than",
    type=click.IntRange(min=0),
    default=300,
    show_default=True,
    help="Only top-ups pending for at least this many seconds.",
)
def payments_reconcile(older_than: int) -> None:
    """Ask Stripe about every top-up still pending and credit the ones that were paid (their
    webhook lost, the payer's page closed). Safe to run at any time, e.g. from cron every
    few minutes: each payment is credited once."""
    from datetime import timedelta

    from portal.stripe_payments import stripe_provider
    from portal.top_ups import reconcile

    async def run(services: Any) -> tuple[int, int] | None:
        provider = stripe_provider(services)
        if provider is None:
            return None
        return await reconcile(services.engine, provider, older_than=timedelta(seconds=older_than))

    answer = _with_services(load_settings(), run)
    if answer is None:
        raise click.ClickException("Stripe is not configured (MEGAMOVIE_STRIPE_SECRET_KEY).")
    checked, credited = answer
    click.echo(f"{checked} pending top-ups checked with Stripe, {credited} paid and credited.")
