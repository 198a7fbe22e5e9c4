"""Master keys and data keys: the keyring, start-up checks, wrapping, rotation, the CLI."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio
import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from portal.cli import main
from portal.db import create_engine, new_id
from portal.errors import KeyringError, VaultTampered
from portal.migrations import upgrade
from portal.services import vault_config
from portal.settings import Secret, Settings
from portal.vault import Vault, open_vault
from portal.vault.keyring import parse_keys
from portal.vault.tables import data_keys, vault_keys

T = TypeVar("T")
pytestmark = pytest.mark.anyio
KEY_A = base64.b64encode(b"A" * 32).decode()
KEY_B = base64.b64encode(b"B" * 32).decode()
KEY_C = base64.b64encode(b"C" * 32).decode()


async def with_vault(settings: Settings, action: Callable[[Vault], Awaitable[T]]) -> T:
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = create_engine(settings.database_url)
    try:
        await upgrade(engine)
        vault = await open_vault(vault_config(settings), engine)
        try:
            return await action(vault)
        finally:
            await vault.aclose()
    finally:
        await engine.dispose()


@pytest.fixture
def db_settings(settings: Settings, database_url: str) -> Settings:
    return settings.replace(database_url=database_url)


def env_keys(settings: Settings, keys: str) -> Settings:
    return settings.replace(master_keys=Secret(keys))


def store_video(data: bytes) -> Callable[[Vault], Awaitable[str]]:
    async def action(vault: Vault) -> str:
        owner = new_id()
        await vault.create_key(owner)
        await vault.put(owner, "hls/720p/000001.m4s", data)
        return owner

    return action


async def key_ids(vault: Vault) -> list[str]:
    return vault.keyring.ids


def read_video(owner: str) -> Callable[[Vault], Awaitable[bytes]]:
    async def action(vault: Vault) -> bytes:
        return await vault.read(owner, "hls/720p/000001.m4s")

    return action


# The keyring ----------------------------------------------------------------------------


async def test_keys_parse_newest_last_from_commas_or_lines() -> None:
    keys = parse_keys(f"k1:{KEY_A}, k2:{KEY_B}\n# a comment\nk3:{KEY_C}  # newest", "test")
    assert [k.key_id for k in keys] == ["k1", "k2", "k3"]
    assert keys[0].key == b"A" * 32
    assert "AAAA" not in repr(keys)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no master keys"),
        (KEY_A, "is not 'id:base64key'"),
        (f"bad id:{KEY_A}", "is not 'id:base64key'"),
        ("k1:not-base64!!", "not valid base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", "master keys are 32 random bytes"),
        (f"k1:{KEY_A},k1:{KEY_B}", "appears twice"),
    ],
)
async def test_malformed_keyrings_are_clear_errors_quoting_no_key(text: str, message: str) -> None:
    with pytest.raises(KeyringError, match=message) as info:
        parse_keys(text, "MEGAMOVIE_MASTER_KEYS")
    assert KEY_A not in str(info.value) and "QUFB" not in str(info.value)


async def test_first_run_creates_a_private_key_file_and_warns_to_back_it_up(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="megamovie.vault"):
        first = await with_vault(settings, key_ids)
    assert settings.key_file.stat().st_mode & 0o777 == 0o600
    assert any("BACK IT UP" in r.message for r in caplog.records)
    key_text = settings.key_file.read_text().split(":")[-1].strip()
    assert not any(key_text in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="megamovie.vault"):
        again = await with_vault(settings, key_ids)
    assert again == first and len(first) == 1
    assert not caplog.records  # the second start finds the file and says nothing


async def test_a_wrong_key_is_refused_at_start_up(db_settings: Settings) -> None:
    owner = await with_vault(env_keys(db_settings, f"k1:{KEY_A}"), store_video(b"film"))
    with pytest.raises(KeyringError, match=r"k1.*not the key that was first used"):
        await with_vault(env_keys(db_settings, f"k1:{KEY_B}"), read_video(owner))
    # The right key still opens everything.
    assert await with_vault(env_keys(db_settings, f"k1:{KEY_A}"), read_video(owner)) == b"film"


async def test_a_missing_key_is_refused_at_start_up(db_settings: Settings) -> None:
    await with_vault(env_keys(db_settings, f"k1:{KEY_A}"), store_video(b"film"))
    with pytest.raises(KeyringError, match=r"wrapped by master key.*k1.*lacks"):
        await with_vault(env_keys(db_settings, f"k2:{KEY_B}"), read_video("x"))


async def recorded_key_ids(settings: Settings) -> list[str]:
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            ids = (await conn.execute(select(vault_keys.c.key_id))).scalars().all()
    finally:
        await engine.dispose()
    return sorted(ids)


async def test_a_refused_start_up_records_no_key(db_settings: Settings) -> None:
    owner = await with_vault(env_keys(db_settings, f"k1:{KEY_A}"), store_video(b"film"))
    # k1 wraps the data keys and is missing: refused before k2's check value is written.
    with pytest.raises(KeyringError, match=r"wrapped by master key.*k1.*lacks"):
        await with_vault(env_keys(db_settings, f"k2:{KEY_B}"), read_video(owner))
    # k1 is the wrong key: refused, and k2 is not remembered either.
    with pytest.raises(KeyringError, match=r"k1.*not the key that was first used"):
        await with_vault(env_keys(db_settings, f"k1:{KEY_C},k2:{KEY_B}"), read_video(owner))
    assert await recorded_key_ids(db_settings) == ["k1"]
    # So k2 is still free to be whatever key the operator adds next.
    right = env_keys(db_settings, f"k1:{KEY_A},k2:{KEY_C}")
    assert await with_vault(right, read_video(owner)) == b"film"
    assert await recorded_key_ids(db_settings) == ["k1", "k2"]


async def test_a_lost_key_file_is_refused_and_not_silently_replaced(settings: Settings) -> None:
    owner = await with_vault(settings, store_video(b"film"))
    backup = settings.key_file.read_bytes()
    settings.key_file.unlink()
    with pytest.raises(KeyringError, match="restore the key file from your backup"):
        await with_vault(settings, read_video(owner))
    assert not settings.key_file.exists()
    settings.key_file.write_bytes(backup)
    assert await with_vault(settings, read_video(owner)) == b"film"


async def test_a_wrapped_key_moved_to_another_video_does_not_unwrap(db_settings: Settings) -> None:
    settings = env_keys(db_settings, f"k1:{KEY_A}")
    victim = await with_vault(settings, store_video(b"victim's film"))
    attacker = await with_vault(settings, store_video(b"attacker's film"))

    async def swap(vault: Vault) -> None:
        async with vault.keystore.engine.begin() as conn:
            wrapped = (
                await conn.execute(select(data_keys.c.wrapped).where(data_keys.c.owner == victim))
            ).scalar_one()
            await conn.execute(
                update(data_keys).where(data_keys.c.owner == attacker).values(wrapped=wrapped)
            )

    await with_vault(settings, swap)
    with pytest.raises(VaultTampered, match="failed to unwrap"):
        await with_vault(settings, read_video(attacker))


# Rotation -------------------------------------------------------------------------------


def cli(settings: Settings, *args: str) -> str:
    env = {
        "MEGAMOVIE_DATA_DIR": str(settings.data_dir),
        "MEGAMOVIE_DATABASE_URL": settings.database_url,
        "MEGAMOVIE_MASTER_KEYS": settings.master_keys.reveal() if settings.master_keys else "",
    }
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


async def acli(settings: Settings, *args: str) -> str:
    # The CLI runs its own event loop, so it gets a thread of its own.
    return await anyio.to_thread.run_sync(cli, settings, *args)


async def test_rotating_the_key_file_rewraps_every_key_and_keeps_content_readable(
    db_settings: Settings,
) -> None:
    settings = db_settings
    before = [await with_vault(settings, store_video(os.urandom(5000))) for _ in range(3)]
    old_ids = await with_vault(settings, key_ids)
    contents = {owner: await with_vault(settings, read_video(owner)) for owner in before}

    output = await acli(settings, "keys", "rotate")
    assert "Re-wrapped 3 data key(s)" in output
    ids = await with_vault(settings, key_ids)
    assert ids[:-1] == old_ids and len(ids) == 2
    assert settings.key_file.stat().st_mode & 0o777 == 0o600

    after = await with_vault(settings, store_video(b"after rotation"))
    status = await acli(settings, "keys", "status")
    assert f"{old_ids[0]}  wraps 0 data key(s)" in status
    assert f"{ids[1]}  wraps 4 data key(s)  (newest" in status
    for owner, data in contents.items():
        assert await with_vault(settings, read_video(owner)) == data
    assert await with_vault(settings, read_video(after)) == b"after rotation"

    # The old key can go once it wraps nothing; everything still opens.
    entries = [line for line in settings.key_file.read_text().splitlines() if ":" in line]
    settings.key_file.write_text("\n".join(line for line in entries if line.startswith(ids[1])))
    assert await with_vault(settings, read_video(before[0])) == contents[before[0]]


async def test_rotating_env_keys_tells_the_operator_and_rewraps_to_the_newest_given(
    db_settings: Settings,
) -> None:
    one = env_keys(db_settings, f"k1:{KEY_A}")
    owner = await with_vault(one, store_video(b"film"))
    output = await acli(one, "keys", "rotate")
    assert "MEGAMOVIE_MASTER_KEYS" in output and "keys generate" in output
    assert "Re-wrapped 0 data key(s) under k1" in output

    two = env_keys(db_settings, f"k1:{KEY_A},k2:{KEY_B}")
    assert "Re-wrapped 1 data key(s) under k2" in await acli(two, "keys", "rotate")
    assert "k1  wraps 0" in await acli(two, "keys", "status")
    assert await with_vault(env_keys(db_settings, f"k2:{KEY_B}"), read_video(owner)) == b"film"
    assert not db_settings.key_file.exists()


async def test_generated_entries_are_valid_keys(settings: Settings) -> None:
    entry = (await acli(settings, "keys", "generate")).strip()
    (key,) = parse_keys(entry, "generated")
    assert len(key.key) == 32


async def test_a_running_vault_picks_up_a_key_added_by_rotation(settings: Settings) -> None:
    before = await with_vault(settings, store_video(b"old"))
    engine = create_engine(settings.database_url)
    running = await open_vault(vault_config(settings), engine)
    try:
        await acli(settings, "keys", "rotate")
        newer = await with_vault(settings, store_video(b"new"))
        # The running vault never saw the new key: it re-reads the key file once.
        assert await running.read(newer, "hls/720p/000001.m4s") == b"new"
        assert await running.read(before, "hls/720p/000001.m4s") == b"old"
        assert len(running.keyring.ids) == 2
    finally:
        await running.aclose()
        await engine.dispose()


async def test_key_file_keeps_working_with_env_unset_after_rotation(tmp_path: Path) -> None:
    settings = Settings.from_env({"MEGAMOVIE_DATA_DIR": str(tmp_path / "d")})
    owner = await with_vault(settings, store_video(b"x"))
    await acli(settings, "keys", "rotate")
    await acli(settings, "keys", "rotate")
    assert await with_vault(settings, read_video(owner)) == b"x"
    assert len(await with_vault(settings, key_ids)) == 3


async def test_a_destroyed_wrapped_key_leaves_no_trace_in_the_sqlite_files(
    settings: Settings,
) -> None:
    async def destroy_then_search_files(vault: Vault) -> None:
        owner = new_id()
        await vault.create_key(owner)
        async with vault.keystore.engine.connect() as conn:
            wrapped = (
                await conn.execute(select(data_keys.c.wrapped).where(data_keys.c.owner == owner))
            ).scalar_one()
        await vault.destroy(owner)
        # Searched while the database is still open: its write-ahead log is still there.
        files = [p for p in settings.data_dir.iterdir() if p.name.startswith("megamovie.db")]
        assert len(files) > 1
        for path in files:
            assert wrapped not in path.read_bytes(), f"the shredded key survives in {path.name}"

    await with_vault(settings, destroy_then_search_files)


async def test_the_cli_tells_a_vault_error_as_a_message_not_a_traceback(settings: Settings) -> None:
    await with_vault(settings, store_video(b"film"))
    settings.key_file.unlink()
    env = {"MEGAMOVIE_DATA_DIR": str(settings.data_dir), "MEGAMOVIE_MASTER_KEYS": ""}
    result = await anyio.to_thread.run_sync(
        lambda: CliRunner().invoke(main, ["keys", "status"], env=env, catch_exceptions=False)
    )
    assert result.exit_code == 1
    assert "Error: the database holds data keys for master key(s)" in result.output
    assert "restore the key file from your backup" in result.output
    assert "Traceback" not in result.output
