"""Encryption at rest: master keys, per-video data keys, sealed objects, storage backends.

See docs/vault-format.md for the format, the key hierarchy and the threat model. A leaf like
transcoder/: it imports nothing else of the portal, takes its configuration as a `VaultConfig`,
owns its tables (`tables`) and its errors (`errors`).
"""

from portal.vault.backend import Storage, Upload
from portal.vault.config import StorageConfig, VaultConfig
from portal.vault.keystore import KeyStatus, RotationReport
from portal.vault.storage import LocalStorage, open_storage
from portal.vault.vault import ObjectWriter, Vault, open_vault

__all__ = [
    "KeyStatus",
    "LocalStorage",
    "ObjectWriter",
    "RotationReport",
    "Storage",
    "StorageConfig",
    "Upload",
    "Vault",
    "VaultConfig",
    "open_storage",
    "open_vault",
]
