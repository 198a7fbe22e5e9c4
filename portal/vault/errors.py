"""The vault's errors. The vault is a leaf (it imports nothing else of the portal), so these
know nothing of HTTP: `portal.http_errors` maps them to statuses, the CLI prints their message.

Each carries a message a person can act on; messages never contain keys or plaintext.
"""

from __future__ import annotations


class VaultError(Exception):
    """Base of the vault's errors: storage and encryption at rest."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class KeyringError(VaultError):
    """The key-encryption keys are missing, malformed, or not the ones the data was wrapped with."""


class DataKeyMissing(VaultError):
    """No data key exists for this owner: never created, or destroyed (crypto-shredded)."""


class DataKeyExists(VaultError):
    """A data key was asked for an owner that has one already."""


class VaultTampered(VaultError):
    """Stored ciphertext failed authentication: modified, truncated, reordered, swapped,
    or opened with the wrong key. No plaintext of the bad chunk is released."""


class ObjectNotFound(VaultError):
    """No object under that name."""


class ObjectNameInvalid(VaultError):
    """An owner or object path the vault refuses: `..`, absolute, empty segments, odd characters."""


class StorageError(VaultError):
    """The storage backend failed (disk full, S3 unreachable, ...)."""


class StorageFull(StorageError):
    """The disk (or quota) under the object store is full: nothing of the write was kept."""
