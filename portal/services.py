"""The portal's long-lived parts, built once from `Settings`: database (opened and migrated),
vault, job queue, uploads, playback tokens and metrics.

Every entry point builds them here and nowhere else: the web app's lifespan, `megamovie
worker`, each CLI command and the tests. Handlers reach them typed, through
`portal.web.services_of(request)`, never as loose attributes of `app.state`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from portal.db import create_engine
from portal.jobs import JobQueue
from portal.metrics import Metrics
from portal.migrations import upgrade
from portal.settings import Settings
from portal.signing import load_secret_key
from portal.tokens import PlaybackTokens
from portal.uploads import Uploads
from portal.vault import StorageConfig, Vault, VaultConfig, open_vault


def prepare_data_dir(settings: Settings) -> None:
    """Create the data dir private to this user (it holds keys and the database)."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.data_dir.chmod(0o700)


@asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """The engine, with the schema brought to the newest migration; disposed on exit."""
    prepare_data_dir(settings)
    engine = create_engine(settings.database_url)
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

    @classmethod
    def build(cls, settings: Settings, engine: AsyncEngine, vault: Vault) -> Services:
        jobs = JobQueue(
            engine,
            lease_seconds=settings.job_lease_seconds,
            max_attempts=settings.job_max_attempts,
        )
        secret_key = load_secret_key(settings)
        return cls(
            settings=settings,
            engine=engine,
            vault=vault,
            jobs=jobs,
            uploads=Uploads(settings, engine, vault, jobs),
            tokens=PlaybackTokens(secret_key, settings.token_ttl_seconds),
            metrics=Metrics(),
            secret_key=secret_key,
        )


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    """Open everything `Services` holds; closes the vault and the engine on exit."""
    async with open_database(settings) as engine:
        vault = await open_vault(vault_config(settings), engine)
        try:
            yield Services.build(settings, engine, vault)
        finally:
            await vault.aclose()
