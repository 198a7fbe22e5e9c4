"""Vault fixtures: a real SeaweedFS S3 server for the session, and vaults on either backend.

The S3 server runs `weed mini` on free loopback ports with its own credentials, in its own
process group, which is killed whole at the end of the session (benchmarks.stack.SeaweedFS,
which the fault tests and the launch benchmark start too).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from benchmarks.stack import SeaweedFS
from portal.db import create_engine, new_id
from portal.migrations import upgrade
from portal.services import vault_config
from portal.settings import Secret, Settings
from portal.vault import Vault, open_vault

ACCESS_KEY = "megamovie-test"
SECRET_KEY = "megamovie-test-secret-" + secrets.token_hex(8)
BUCKET = "megamovie-vault-tests"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str

    def settings_for(self, settings: Settings, prefix: str) -> Settings:
        return settings.replace(
            storage_url=f"s3://{self.bucket}/{prefix}",
            s3_endpoint_url=self.endpoint,
            s3_access_key_id=self.access_key,
            s3_secret_access_key=Secret(self.secret_key),
        )

    def client(self):  # type: ignore[no-untyped-def]
        """A plain synchronous botocore client, to look at what the vault stored."""
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    seaweed = SeaweedFS(
        tmp_path_factory.mktemp("seaweedfs"), bucket=BUCKET, secret=SECRET_KEY,
        access_key=ACCESS_KEY,
    )  # fmt: skip
    try:
        seaweed.start()
        yield S3Server(seaweed.endpoint, BUCKET, ACCESS_KEY, SECRET_KEY)
    finally:
        seaweed.stop()


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def vault_settings(request: pytest.FixtureRequest, settings: Settings, backend: str) -> Settings:
    """Settings for a vault on the chosen backend (S3: a fresh prefix in the test bucket).

    The chunk size is pinned to 64 KiB, which the tests' offsets are written for, whatever
    the default is."""
    settings = settings.replace(vault_chunk_size=64 * 1024)
    if backend == "local":
        return settings
    server: S3Server = request.getfixturevalue("s3_server")
    return server.settings_for(settings, f"t-{secrets.token_hex(6)}")


@pytest.fixture
async def vault(vault_settings: Settings) -> AsyncIterator[Vault]:
    settings = vault_settings
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = create_engine(settings.database_url)
    await upgrade(engine)
    opened = await open_vault(vault_config(settings), engine)
    try:
        yield opened
    finally:
        await opened.aclose()
        await engine.dispose()


@pytest.fixture
async def owner(vault: Vault) -> str:
    video = new_id()
    await vault.create_key(video)
    return video
