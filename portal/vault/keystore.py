"""Data keys in the database, only ever stored wrapped by a master key; and key-check values.

A data key is 32 random bytes per owner (video). It is wrapped with AES-256-GCM under the
newest master key, with the owner and key id bound as associated data, so a wrapped key copied
to another owner's row, or relabelled with another key id, fails to unwrap. A key-check value
per master key id lets start-up prove each configured key is the one used before.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from portal.vault.errors import DataKeyExists, DataKeyMissing, KeyringError, VaultTampered
from portal.vault.format import length_prefixed
from portal.vault.keyring import Keyring, MasterKey
from portal.vault.tables import data_keys, vault_keys

DATA_KEY_BYTES = 32
NONCE_BYTES = 12
WRAP_AD = b"megamovie-vault-v1 data-key\x00"
CHECK_AD = b"megamovie-vault-v1 key-check\x00"
CHECK_PLAINTEXT = b"megamovie-vault-v1 key-check"
# Unwrapped data keys kept in memory, so the segment endpoint does not query and unwrap per
# request. Small and per process; destroy() evicts its own entry.
CACHE_SIZE = 512


@dataclass(frozen=True)
class KeyStatus:
    key_id: str
    newest: bool
    wraps: int


@dataclass(frozen=True)
class RotationReport:
    key_id: str  # the newest key, which now wraps every data key
    rewrapped: int
    already_current: int


def wrap_data_key(kek: MasterKey, owner: str, data_key: bytes, nonce: bytes | None = None) -> bytes:
    """nonce(12) || AES-256-GCM(kek, data_key, ad=WRAP_AD || lp(owner) || lp(key_id))."""
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    ad = WRAP_AD + length_prefixed(owner) + length_prefixed(kek.key_id)
    return nonce + AESGCM(kek.key).encrypt(nonce, data_key, ad)


def unwrap_data_key(kek: MasterKey, owner: str, wrapped: bytes) -> bytes:
    ad = WRAP_AD + length_prefixed(owner) + length_prefixed(kek.key_id)
    try:
        return AESGCM(kek.key).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], ad)
    except (InvalidTag, ValueError):
        raise VaultTampered(
            f"the data key of {owner!r} failed to unwrap under master key {kek.key_id!r}: "
            "its database row was altered or moved from another video"
        ) from None


def key_check_value(kek: MasterKey, nonce: bytes | None = None) -> bytes:
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    ad = CHECK_AD + length_prefixed(kek.key_id)
    return nonce + AESGCM(kek.key).encrypt(nonce, CHECK_PLAINTEXT, ad)


def key_matches(kek: MasterKey, check_value: bytes) -> bool:
    ad = CHECK_AD + length_prefixed(kek.key_id)
    try:
        plain = AESGCM(kek.key).decrypt(check_value[:NONCE_BYTES], check_value[NONCE_BYTES:], ad)
    except (InvalidTag, ValueError):
        return False
    return plain == CHECK_PLAINTEXT


async def known_key_ids(engine: AsyncEngine) -> set[str]:
    """Every master key id the database has seen (checked, or wrapping data keys)."""
    async with engine.connect() as conn:
        checked = (await conn.execute(select(vault_keys.c.key_id))).scalars().all()
        wrapping = (await conn.execute(select(data_keys.c.key_id).distinct())).scalars().all()
    return set(checked) | set(wrapping)


class KeyStore:
    """The `data_keys` and `vault_keys` tables, seen through a keyring.

    `reload`, if given, re-reads the keyring; it is used once when a data key names a master
    key we lack, so a server picks up a key that `megamovie keys rotate` added to the key file.
    """

    def __init__(
        self, engine: AsyncEngine, keyring: Keyring, reload: Callable[[], Keyring] | None = None
    ) -> None:
        self.engine = engine
        self.keyring = keyring
        self._reload = reload
        self._cache: OrderedDict[str, bytes] = OrderedDict()

    async def verify(self) -> None:
        """Prove every configured key is the one used before, refuse to start when data keys
        are wrapped by a key that is not configured, and only then record new keys: a refused
        start-up writes nothing, so a wrong key is never remembered as the right one."""
        async with self.engine.connect() as conn:
            checks = dict(
                (await conn.execute(select(vault_keys.c.key_id, vault_keys.c.check_value))).all()
            )
            wrapping = (await conn.execute(select(data_keys.c.key_id).distinct())).scalars().all()
        for kek in self.keyring.keys:
            if kek.key_id in checks and not key_matches(kek, checks[kek.key_id]):
                raise self._wrong_key(kek)
        missing = sorted(set(wrapping) - set(self.keyring.ids))
        if missing:
            raise KeyringError(
                f"data keys are wrapped by master key(s) {', '.join(missing)}, which the keyring "
                f"({self._origin()}) lacks; restore them from your backup"
            )
        for kek in self.keyring.keys:
            if kek.key_id not in checks:
                await self._verify_one(kek)

    def _wrong_key(self, kek: MasterKey) -> KeyringError:
        return KeyringError(
            f"master key {kek.key_id!r} ({self._origin()}) is not the key that "
            "was first used under that id; restore the right key from backup"
        )

    async def _verify_one(self, kek: MasterKey) -> None:
        for _attempt in range(2):
            async with self.engine.begin() as conn:
                row = (
                    await conn.execute(
                        select(vault_keys.c.check_value).where(vault_keys.c.key_id == kek.key_id)
                    )
                ).first()
                if row is not None:
                    if not key_matches(kek, row.check_value):
                        raise self._wrong_key(kek)
                    return
                try:
                    await conn.execute(
                        vault_keys.insert().values(
                            key_id=kek.key_id,
                            check_value=key_check_value(kek),
                            created_at=datetime.now(UTC),
                        )
                    )
                    return
                except IntegrityError:
                    pass  # another process recorded it first: go round and check theirs

    def _origin(self) -> str:
        if self.keyring.source == "file":
            return f"key file {self.keyring.path}"
        return "MEGAMOVIE_MASTER_KEYS"

    async def create(self, owner: str) -> bytes:
        data_key = os.urandom(DATA_KEY_BYTES)
        kek = self.keyring.newest
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    data_keys.insert().values(
                        owner=owner,
                        key_id=kek.key_id,
                        wrapped=wrap_data_key(kek, owner, data_key),
                        created_at=datetime.now(UTC),
                    )
                )
        except IntegrityError:
            raise DataKeyExists(f"a data key for {owner!r} exists already") from None
        self._remember(owner, data_key)
        return data_key

    async def exists(self, owner: str) -> bool:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(data_keys.c.owner).where(data_keys.c.owner == owner))
            ).first()
        return row is not None

    async def load(self, owner: str) -> bytes:
        cached = self._cache.get(owner)
        if cached is not None:
            self._cache.move_to_end(owner)
            return cached
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(data_keys.c.key_id, data_keys.c.wrapped).where(
                        data_keys.c.owner == owner
                    )
                )
            ).first()
        if row is None:
            raise DataKeyMissing(
                f"no data key for {owner!r}: it was never created, or the video was deleted "
                "(crypto-shredded)"
            )
        kek = self.keyring.get(row.key_id) or await self._reloaded_key(row.key_id)
        if kek is None:
            raise KeyringError(
                f"the data key of {owner!r} is wrapped by master key {row.key_id!r}, which the "
                f"keyring ({self._origin()}) lacks; add it and restart"
            )
        data_key = unwrap_data_key(kek, owner, row.wrapped)
        self._remember(owner, data_key)
        return data_key

    async def _reloaded_key(self, key_id: str) -> MasterKey | None:
        if self._reload is None:
            return None
        keyring = self._reload()
        if keyring.get(key_id) is None:
            return None
        previous, self.keyring = self.keyring, keyring
        try:
            await self.verify()
        except KeyringError:
            self.keyring = previous
            raise
        return keyring.get(key_id)

    def _remember(self, owner: str, data_key: bytes) -> None:
        self._cache[owner] = data_key
        self._cache.move_to_end(owner)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    async def destroy(self, owner: str) -> bool:
        """Delete the owner's data key; True if there was one."""
        self._cache.pop(owner, None)
        async with self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                # Overwrite the deleted row's bytes in the database file instead of leaving
                # the wrapped key in a free page.
                await conn.execute(text("PRAGMA secure_delete=ON"))
            result = await conn.execute(delete(data_keys).where(data_keys.c.owner == owner))
        if self.engine.dialect.name == "sqlite":
            # The write-ahead log still holds the page as it was before the delete; fold it
            # into the database file and truncate it, so the old wrapped key is gone from
            # both. (Busy readers can make this a no-op; the next checkpoint overwrites it.)
            async with self.engine.connect() as conn:
                await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        return bool(result.rowcount)

    async def rewrap_all(self, batch: int = 500) -> RotationReport:
        """Re-wrap every data key under the newest master key; content is untouched."""
        newest = self.keyring.newest
        rewrapped = 0
        while True:
            async with self.engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(data_keys.c.owner, data_keys.c.key_id, data_keys.c.wrapped)
                        .where(data_keys.c.key_id != newest.key_id)
                        .order_by(data_keys.c.owner)
                        .limit(batch)
                    )
                ).all()
            if not rows:
                break
            async with self.engine.begin() as conn:
                for row in rows:
                    kek = self.keyring.get(row.key_id)
                    if kek is None:
                        raise KeyringError(
                            f"cannot re-wrap the data key of {row.owner!r}: master key "
                            f"{row.key_id!r} is not in the keyring ({self._origin()})"
                        )
                    data_key = unwrap_data_key(kek, row.owner, row.wrapped)
                    # Only if the row is still the one we read: a concurrent destroy wins.
                    await conn.execute(
                        update(data_keys)
                        .where(data_keys.c.owner == row.owner, data_keys.c.key_id == row.key_id)
                        .values(
                            key_id=newest.key_id, wrapped=wrap_data_key(newest, row.owner, data_key)
                        )
                    )
                    rewrapped += 1
        counts = await self.wrap_counts()
        return RotationReport(newest.key_id, rewrapped, counts.get(newest.key_id, 0) - rewrapped)

    async def wrap_counts(self) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(data_keys.c.key_id, func.count()).group_by(data_keys.c.key_id)
                )
            ).all()
        return {key_id: count for key_id, count in rows}

    async def status(self) -> list[KeyStatus]:
        counts = await self.wrap_counts()
        newest = self.keyring.newest.key_id
        return [
            KeyStatus(key.key_id, key.key_id == newest, counts.get(key.key_id, 0))
            for key in self.keyring.keys
        ]
