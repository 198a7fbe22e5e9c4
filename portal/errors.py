"""Domain errors. Modules raise these; `portal.http_errors` maps them to HTTP in one place.

Each error carries a message a person can act on. Messages never contain secrets, keys or
plaintext.
"""

from __future__ import annotations

from typing import Any

# The vault is a leaf with its own errors (no HTTP in them); they are re-exported here so the
# portal names every error it raises from one module. `portal.http_errors` maps them too.
from portal.vault.errors import DataKeyExists as DataKeyExists
from portal.vault.errors import DataKeyMissing as DataKeyMissing
from portal.vault.errors import KeyringError as KeyringError
from portal.vault.errors import ObjectNameInvalid as ObjectNameInvalid
from portal.vault.errors import ObjectNotFound as ObjectNotFound
from portal.vault.errors import StorageError as StorageError
from portal.vault.errors import StorageFull as StorageFull
from portal.vault.errors import VaultError as VaultError
from portal.vault.errors import VaultTampered as VaultTampered


class PortalError(Exception):
    """Base of every error the portal raises on purpose."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> dict[str, Any]:
        """Fields an API client gets beside `error` and `message`."""
        return {}


class NotFound(PortalError):
    status_code = 404
    code = "not_found"


class AuthenticationRequired(PortalError):
    status_code = 401
    code = "authentication_required"


class BearerTokenRequired(AuthenticationRequired):
    """401 for an endpoint that takes only a bearer token; answered with `WWW-Authenticate`."""


class InvalidCredentials(PortalError):
    status_code = 401
    code = "invalid_credentials"


class PermissionDenied(PortalError):
    status_code = 403
    code = "permission_denied"


class CsrfFailed(PortalError):
    status_code = 403
    code = "csrf_failed"


class TokenInvalid(PortalError):
    """A playback or API token is forged, expired, or bound to someone else."""

    status_code = 403
    code = "token_invalid"


class LicenseRequired(PortalError):
    """The viewer's licence does not cover this; `offers` (JSON) say how to get one."""

    status_code = 402
    code = "license_required"

    def __init__(self, message: str, offers: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.offers = offers or []

    def details(self) -> dict[str, Any]:
        return {"offers": self.offers}


class TooManyStreams(PortalError):
    """The viewer already has the most concurrent streams their account allows."""

    status_code = 429
    code = "too_many_streams"


class InsufficientFunds(PortalError):
    """The wallet holds less than the price; nothing was charged."""

    status_code = 402
    code = "insufficient_funds"


class PaymentFailed(PortalError):
    """The payment provider refused or failed the charge; nothing was credited."""

    status_code = 402
    code = "payment_failed"


class RateLimited(PortalError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int = 60) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(PortalError):
    """This process has more work than it can finish in time: come back in `retry_after`
    seconds. Answered at once (503), never after a wait in a queue."""

    status_code = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(PortalError):
    """A part the portal depends on (the database, the object store) is down or not
    answering in time; `part` names it. Service resumes by itself when it is back."""

    status_code = 503
    code = "unavailable"

    def __init__(self, message: str, part: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.part = part
        self.retry_after = retry_after


class Conflict(PortalError):
    status_code = 409
    code = "conflict"


class ValidationFailed(PortalError):
    status_code = 422
    code = "validation_failed"


class BadRequest(ValidationFailed):
    """A request field that is malformed (wrong type, unknown currency, missing header): 400,
    naming the `field` so a client can point at it."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field

    def details(self) -> dict[str, Any]:
        return {"field": self.field}


class PayloadTooLarge(PortalError):
    """A request body over the endpoint's cap; refused before reading past the cap."""

    status_code = 413
    code = "payload_too_large"


class UploadRejected(PortalError):
    status_code = 400
    code = "upload_rejected"


class QuotaExceeded(UploadRejected):
    status_code = 413
    code = "quota_exceeded"


class UploadTooLarge(UploadRejected):
    status_code = 413
    code = "upload_too_large"


class TooManyUploads(UploadRejected):
    """The creator already has as many unfinished uploads as one may keep open."""

    status_code = 429
    code = "too_many_uploads"


class UploadGone(UploadRejected):
    """The upload expired before it was finished; its bytes are (or will be) deleted."""

    status_code = 410
    code = "upload_gone"


class UnsupportedContentType(UploadRejected):
    status_code = 415
    code = "unsupported_content_type"


class UnsupportedProtocol(UploadRejected):
    """The client speaks a tus version we do not."""

    status_code = 412
    code = "unsupported_protocol"


class ChecksumMismatch(UploadRejected):
    """The chunk's bytes do not match its Upload-Checksum; nothing of it was kept."""

    status_code = 460  # the tus checksum extension's own status code
    code = "checksum_mismatch"


#: Every error whose message is meant for a person: the CLI prints these instead of a traceback.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (PortalError, VaultError)
