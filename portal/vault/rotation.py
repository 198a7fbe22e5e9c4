"""Master key rotation and status, as the `megamovie keys` commands run them.

Rotation adds a master key (to the key file; with MEGAMOVIE_MASTER_KEYS the operator adds it)
and re-wraps every data key under the newest key. Objects are never re-encrypted, so old
content stays readable throughout, and rotation takes seconds however much video is stored.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from portal.vault.config import VaultConfig
from portal.vault.keyring import add_key_to_file
from portal.vault.vault import open_keystore

ENV_NOTICE = (
    "The master keys come from MEGAMOVIE_MASTER_KEYS, which this command cannot change. To "
    "rotate: append a new key to it (`megamovie keys generate` prints one), restart the "
    "portal with it, then run `megamovie keys rotate` again."
)


async def rotate_keys(config: VaultConfig, engine: AsyncEngine) -> list[str]:
    """Add a key (key file only), re-wrap every data key under the newest; lines to show."""
    keystore = await open_keystore(config, engine)
    lines: list[str] = []
    if keystore.keyring.source == "file":
        new = add_key_to_file(keystore.keyring)
        lines.append(
            f"Added master key {new.key_id} to {keystore.keyring.path}. BACK UP the key file "
            "again now."
        )
        keystore = await open_keystore(config, engine)
    else:
        lines.append(ENV_NOTICE)
    report = await keystore.rewrap_all()
    lines.append(
        f"Re-wrapped {report.rewrapped} data key(s) under {report.key_id}; "
        f"{report.already_current} were already wrapped by it."
    )
    lines.append(
        "Older keys now wrap nothing: keep them while backups of the database that still "
        "need them exist, then remove them from the keyring."
    )
    return lines


async def key_status_lines(config: VaultConfig, engine: AsyncEngine) -> list[str]:
    keystore = await open_keystore(config, engine)
    source = (
        f"key file {keystore.keyring.path}"
        if keystore.keyring.source == "file"
        else "MEGAMOVIE_MASTER_KEYS"
    )
    lines = [f"Master keys from {source}, oldest first:"]
    for status in await keystore.status():
        newest = "  (newest: wraps new data keys)" if status.newest else ""
        lines.append(f"  {status.key_id}  wraps {status.wraps} data key(s){newest}")
    return lines
