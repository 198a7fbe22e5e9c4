"""The portal's long-lived parts, built once from `Settings`: database (opened and migrated),
vault, job queue, uploads, playback tokens, metrics, the licensing plugin manager and the
watch-time meter.

Every entry point builds them here and nowhere else: the web app's lifespan, `megamovie
worker`, each CLI command and the tests. Handlers reach them typed, through
`portal.web.services_of(request)`, never as loose attributes of `app.state`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from sqlalchemy.ext.asyncio import AsyncEngine

from portal.db import create_engine
from portal.hashing import HashingPool
from portal.jobs import JobQueue
from portal.leases import leases_for
from portal.licensing.plugins import Plugins
from portal.metering import Meter, WatchRecord
from portal.metrics import Metrics
from portal.migrations import upgrade
from portal.ratelimit import RateLimiter
from portal.settings import Settings
from portal.signing import load_secret_key
from portal.tokens import PlaybackTokens
from portal.uploads import Uploads
from portal.vault import StorageConfig, Vault, VaultConfig, open_vault

log = logging.getLogger("megamovie.services")


def prepare_data_dir(settings: Settings) -> None:
    """Create the data dir private to this user (it holds keys and the database)."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.data_dir.chmod(0o700)


@asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """The engine, with the schema brought to the newest migration; disposed on exit."""
    prepare_data_dir(settings)
    engine = create_engine(
        settings.database_url,
        timeout=settings.db_timeout_seconds,
        statement_timeout=settings.db_statement_timeout_seconds,
    )
    try:
        await upgrade(engine)
        yield engine
    finally:
        await engine.dispose()


def vault_config(settings: Settings) -> VaultConfig:
    """What the vault is told: it never reads Settings itself."""
    secret = settings.s3_secret_access_key
    master_keys = settings.master_keys
    return VaultConfig(
        key_file=settings.key_file,
        master_keys=master_keys.reveal() if master_keys else None,
        chunk_size=settings.vault_chunk_size,
        storage=StorageConfig(
            url=settings.storage_url,
            s3_endpoint_url=settings.s3_endpoint_url,
            s3_region=settings.s3_region,
            s3_access_key_id=settings.s3_access_key_id,
            s3_secret_access_key=secret.reveal() if secret else None,
            s3_timeout_seconds=settings.s3_timeout_seconds,
        ),
    )


@dataclass
class Services:
    """What the app, the workers and the CLI share. Built by `open_services`."""

    settings: Settings
    engine: AsyncEngine
    vault: Vault
    jobs: JobQueue
    uploads: Uploads
    tokens: PlaybackTokens
    metrics: Metrics
    secret_key: bytes
    hashing: HashingPool
    limiter: RateLimiter
    plugins: Plugins
    meter: Meter

    @classmethod
    def build(cls, settings: Settings, engine: AsyncEngine, vault: Vault) -> Services:
        jobs = JobQueue(
            engine,
            lease_seconds=settings.job_lease_seconds,
            max_attempts=settings.job_max_attempts,
        )
        secret_key = load_secret_key(settings)
        metrics = Metrics()
        plugins = Plugins(settings.plugin_modules, extra=optional_plugins(settings))
        services: Services | None = None

        async def watch_time_recorded(records: list[WatchRecord]) -> None:
            await plugins.notify("watch_time_recorded", portal=services, records=records)

        services = cls(
            settings=settings,
            engine=engine,
            vault=vault,
            jobs=jobs,
            uploads=Uploads(settings, engine, vault, jobs, leases_for(settings, engine)),
            tokens=PlaybackTokens(secret_key, settings.token_ttl_seconds),
            metrics=metrics,
            secret_key=secret_key,
            hashing=HashingPool(settings.hash_threads, settings.hash_queue, metrics),
            limiter=RateLimiter(
                settings.rate_limit_per_minute,
                {
                    "signup": settings.signup_rate_per_second,
                    "login": settings.login_rate_per_second,
                    "token": settings.login_rate_per_second,
                },
            ),
            plugins=plugins,
            meter=Meter(engine, on_recorded=watch_time_recorded),
        )
        return services


def optional_plugins(settings: Settings) -> list[tuple[str, object]]:
    """The portal's own plugins that settings turn on: Stripe when its key is set (imported
    only then: the stripe package is large)."""
    if not settings.stripe_enabled:
        return []
    from portal.stripe_payments import payment_plugins

    return payment_plugins(settings)


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    """Open everything `Services` holds; closes the vault and the engine on exit."""
    async with open_database(settings) as engine:
        vault = await open_vault(vault_config(settings), engine)
        try:
            services = Services.build(settings, engine, vault)
            try:
                yield services
            finally:
                await services.uploads.leases.aclose()
                services.hashing.close()
                services.metrics.close()
                await services.plugins.aclose()
        finally:
            await vault.aclose()


async def run_metering(services: Services, stop: anyio.Event) -> None:
    """Flush the meter every `metering_flush_seconds` until `stop`, then once more, so a clean
    shutdown loses nothing that was earned."""
    every = services.settings.metering_flush_seconds
    while not stop.is_set():
        with anyio.move_on_after(every):
            await stop.wait()
        try:
            await services.meter.flush()
        except Exception:
            log.exception("writing watch time failed; it is kept and tried again")
