"""Responses under /api/uploads carry `Tus-Resumable` even when no tus endpoint made them."""

from __future__ import annotations

from sqlalchemy import text
from starlette.testclient import TestClient

from tests.helpers import TUS, add_ready_video, add_user, bearer, log_in


def test_a_csrf_refusal_of_an_upload_says_tus_resumable(client):
    creator = add_user(client, "maker@example.org", role="creator")
    video_id = add_ready_video(client, creator.id)
    log_in(client, "maker@example.org")
    # A cookie session without the X-CSRF-Token header: refused before any endpoint runs.
    refused = client.post("/api/uploads", headers={**TUS, "Upload-Length": "10"})
    elsewhere = client.put(f"/api/videos/{video_id}/position", json={"position": 3})
    assert refused.status_code == 403
    assert refused.json()["error"] == "csrf_failed"
    assert refused.headers["tus-resumable"] == "1.0.0"
    assert elsewhere.status_code == 403
    assert "tus-resumable" not in elsewhere.headers  # only tus paths speak tus


def test_an_unexpected_error_on_an_upload_says_tus_resumable(app):
    with TestClient(app, raise_server_exceptions=False) as client:
        add_user(client, "maker@example.org", role="creator")
        auth = bearer(client, "maker@example.org")

        async def rename(old: str, new: str) -> None:
            async with app.state.services.engine.begin() as conn:
                await conn.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))

        # A database that fails under the endpoint: the kind of error no handler expects.
        client.portal.call(rename, "uploads", "uploads_away")
        try:
            crashed = client.post("/api/uploads", headers={**TUS, **auth, "Upload-Length": "10"})
        finally:
            client.portal.call(rename, "uploads_away", "uploads")
    assert crashed.status_code == 500
    assert crashed.json()["error"] == "internal_error"
    assert crashed.headers["tus-resumable"] == "1.0.0"
