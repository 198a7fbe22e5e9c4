"""The one place errors become HTTP: the vault's own errors (which know nothing of HTTP) are
mapped there like the portal's."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from starlette.testclient import TestClient

from portal.http_errors import exception_handlers
from portal.vault.errors import (
    DataKeyExists,
    DataKeyMissing,
    KeyringError,
    ObjectNameInvalid,
    ObjectNotFound,
    StorageError,
    VaultError,
    VaultTampered,
)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (DataKeyMissing, 404, "data_key_missing"),
        (DataKeyExists, 409, "conflict"),
        (ObjectNotFound, 404, "object_not_found"),
        (ObjectNameInvalid, 400, "object_name_invalid"),
        (StorageError, 503, "storage_error"),
        (KeyringError, 500, "keyring_error"),
        (VaultTampered, 500, "vault_tampered"),
        (VaultError, 500, "vault_error"),
    ],
)
def test_vault_errors_become_their_status_with_their_message(error, status, code, caplog):
    async def fail(request: Request) -> None:
        raise error("what a person can act on")

    app = Starlette(routes=[Route("/api/x", fail)], exception_handlers=exception_handlers())
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/api/x")
    assert response.status_code == status
    assert response.json() == {"error": code, "message": "what a person can act on"}
    # A server-side vault failure is logged for the operator; a client's mistake is not.
    assert any("vault failure" in r.message for r in caplog.records) == (status >= 500)
