"""SQLite writers queue on the event loop (portal.write_gate) instead of SQLite's busy sleep."""

from __future__ import annotations

import anyio
import pytest
from sqlalchemy import func, select

from portal.db import create_engine, new_id, users, utcnow
from portal.migrations import upgrade

pytestmark = pytest.mark.anyio


async def _add_user(engine) -> None:  # type: ignore[no-untyped-def]
    user_id = new_id()
    async with engine.begin() as conn:
        await conn.execute(
            users.insert().values(id=user_id, email=f"{user_id}@example.org", display_name="w",
                                  password_hash="!", role="viewer", created_at=utcnow())
        )  # fmt: skip


async def test_concurrent_writers_all_commit(settings):
    settings.data_dir.mkdir(parents=True)
    engine = create_engine(settings.database_url)
    await upgrade(engine)
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(40):
                tg.start_soon(_add_user, engine)
        async with engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(users)) == 40
    finally:
        await engine.dispose()


async def test_a_writer_cancelled_mid_transaction_frees_the_gate(settings):
    settings.data_dir.mkdir(parents=True)
    engine = create_engine(settings.database_url)
    await upgrade(engine)
    holding = anyio.Event()

    async def write_then_hang() -> None:
        async with engine.begin() as conn:
            await conn.execute(
                users.insert().values(id="hung", email="hung@example.org", display_name="h",
                                      password_hash="!", role="viewer", created_at=utcnow())
            )  # fmt: skip
            holding.set()
            await anyio.sleep_forever()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(write_then_hang)
            await holding.wait()
            tg.cancel_scope.cancel()
        with anyio.fail_after(10):
            await _add_user(engine)
        async with engine.connect() as conn:
            emails = (await conn.execute(select(users.c.email))).scalars().all()
        assert "hung@example.org" not in emails  # rolled back, nothing half-written
        assert len(emails) == 1
    finally:
        await engine.dispose()
