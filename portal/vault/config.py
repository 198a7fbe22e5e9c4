"""What the vault is told, explicitly: built from the portal's Settings by portal.services,
as transcoder/ is given option objects. The vault never reads Settings or the environment.

Secret values are kept out of `repr`, so a config in a log or a traceback shows no key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class StorageConfig:
    """Where sealed objects rest: `file:///dir` or `s3://bucket/prefix`, and S3's access."""

    url: str
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = field(default=None, repr=False)
    #: Connect and read timeout of each S3 call: an unreachable store fails in seconds.
    s3_timeout_seconds: float = 5.0


@dataclass(frozen=True)
class VaultConfig:
    """The keyring's source and the object format's chunk size.

    `master_keys` (`id:base64key,...`) wins when set; otherwise keys live in `key_file`,
    created with one new key on first run.
    """

    key_file: Path
    storage: StorageConfig
    chunk_size: int = 256 * 1024
    master_keys: str | None = field(default=None, repr=False)
