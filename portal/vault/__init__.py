"""Encryption at rest: master keys, per-video data keys, sealed objects, storage backends.

See docs/vault-format.md for the format, the key hierarchy and the threat model.
"""

from portal.vault.keystore import KeyStatus, RotationReport
from portal.vault.storage import LocalStorage, Storage, Upload, open_storage
from portal.vault.vault import ObjectWriter, Vault, open_vault

__all__ = [
    "KeyStatus",
    "LocalStorage",
    "ObjectWriter",
    "RotationReport",
    "Storage",
    "Upload",
    "Vault",
    "open_storage",
    "open_vault",
]
