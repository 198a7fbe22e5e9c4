"""The keyring of master keys (key-encryption keys, KEKs): 256-bit keys with ids, newest last.

Keys come from `VaultConfig.master_keys` (MEGAMOVIE_MASTER_KEYS, `id:base64key,id:base64key`) or
from the key file in the data dir (one `id:base64key` a line), which is created on first run.
The newest key wraps new data keys; older keys stay to unwrap until rotation re-wraps them.
Key material never appears in `repr`, logs or error messages.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from portal.vault.config import VaultConfig
from portal.vault.errors import KeyringError

log = logging.getLogger("megamovie.vault")

KEY_BYTES = 32
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


@dataclass(frozen=True)
class MasterKey:
    key_id: str
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class Keyring:
    keys: tuple[MasterKey, ...]
    # Where the keys came from: "env" (MEGAMOVIE_MASTER_KEYS) or "file" (`path`).
    source: str
    path: Path | None = None

    @property
    def newest(self) -> MasterKey:
        return self.keys[-1]

    def get(self, key_id: str) -> MasterKey | None:
        for key in self.keys:
            if key.key_id == key_id:
                return key
        return None

    @property
    def ids(self) -> list[str]:
        return [key.key_id for key in self.keys]


def new_key_id() -> str:
    # Readable and roughly sortable by age; random so two machines never collide.
    return f"k{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(3)}"


def generate_entry() -> str:
    """A fresh `id:base64key` entry for the keyring."""
    key = base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()
    return f"{new_key_id()}:{key}"


def parse_keys(text: str, origin: str) -> tuple[MasterKey, ...]:
    """Parse `id:base64key` entries separated by commas or newlines; `#` starts a comment.
    `origin` names the source in errors; errors never quote key material."""
    keys: list[MasterKey] = []
    entries = [
        entry.strip() for line in text.splitlines() for entry in line.split("#", 1)[0].split(",")
    ]
    for number, entry in enumerate(entries, start=1):
        if not entry:
            continue
        key_id, sep, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not sep or not _KEY_ID.fullmatch(key_id):
            raise KeyringError(
                f"{origin}: entry {number} is not 'id:base64key' with an id of 1-32 "
                "characters A-Z, a-z, 0-9, '_' or '-'"
            )
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyringError(f"{origin}: the key of {key_id!r} is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise KeyringError(
                f"{origin}: the key of {key_id!r} is {len(key)} bytes; master keys are "
                f"{KEY_BYTES} random bytes (base64 of 32 bytes, 44 characters)"
            )
        if any(k.key_id == key_id for k in keys):
            raise KeyringError(f"{origin}: key id {key_id!r} appears twice")
        keys.append(MasterKey(key_id, key))
    if not keys:
        raise KeyringError(f"{origin} holds no master keys")
    return tuple(keys)


def keyring_configured(config: VaultConfig) -> bool:
    """Whether keys exist already (in the environment or a key file), before any is made."""
    return bool(config.master_keys) or config.key_file.exists()


def load_keyring(config: VaultConfig, *, create: bool) -> Keyring:
    """The keyring from MEGAMOVIE_MASTER_KEYS, else from the key file; with `create`, a missing
    key file is made with one new key (and a loud warning to back it up)."""
    if config.master_keys:
        return Keyring(parse_keys(config.master_keys, "MEGAMOVIE_MASTER_KEYS"), "env")
    path = config.key_file
    if not path.exists():
        if not create:
            raise KeyringError(
                f"no master keys: set MEGAMOVIE_MASTER_KEYS or restore the key file {path}"
            )
        _create_key_file(path)
    return Keyring(_read_key_file(path), "file", path)


def _read_key_file(path: Path) -> tuple[MasterKey, ...]:
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise KeyringError(f"cannot read the key file {path}: {exc.strerror}") from None
    if mode & 0o077:
        log.warning("the key file %s is readable by other users; run: chmod 600 %s", path, path)
    return parse_keys(text, f"key file {path}")


_FILE_HEADER = (
    "# Mega Movie master keys (key-encryption keys), newest last. BACK THIS FILE UP, apart\n"
    "# from the database and the object storage: without it no stored video can be read.\n"
)


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = _write_private(path, _FILE_HEADER + generate_entry() + "\n")
    # link() refuses to overwrite: when two processes start at once the first key file wins
    # whole and the other reads it, never a half-written or replaced file.
    created = False
    with contextlib.suppress(FileExistsError):
        os.link(tmp, path)
        created = True
    tmp.unlink()
    if created:
        _fsync_dir(path.parent)
        log.warning(
            "Created a new master key file at %s. BACK IT UP NOW, separately from the database "
            "and the object storage: if it is lost, every stored video is unreadable for good.",
            path,
        )


def add_key_to_file(keyring: Keyring) -> MasterKey:
    """Append a new newest key to the keyring's key file, atomically (write a temp file,
    fsync, rename). Returns the new key."""
    if keyring.source != "file" or keyring.path is None:
        raise KeyringError(
            "the master keys come from MEGAMOVIE_MASTER_KEYS: add a new key at its end "
            "(`megamovie keys generate` prints one), restart, then run `megamovie keys rotate`"
        )
    path = keyring.path
    current = path.read_text()
    entry = generate_entry()
    text = current + ("" if current.endswith("\n") else "\n") + entry + "\n"
    tmp = _write_private(path, text)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    key_id = entry.partition(":")[0]
    log.warning("Added master key %s to %s. Back up the key file again.", key_id, path)
    new = parse_keys(entry, "new key")[0]
    return new


def _write_private(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    return tmp


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
