"""/metrics answers only its scraper: the bearer token when one is set, else loopback."""

from __future__ import annotations

import pytest
from starlette.requests import Request
from starlette.testclient import TestClient

from portal.errors import BearerTokenRequired, PermissionDenied
from portal.routes.ops import authorise_scrape, on_loopback
from portal.settings import Secret, Settings

TOKEN = "scrape-me-0123456789"
PROMETHEUS = "text/plain; version=0.0.4"


def request_from(app, address: str | None, authorization: str | None = None) -> Request:
    headers = [(b"authorization", authorization.encode())] if authorization else []
    client = (address, 50000) if address else None
    return Request({"type": "http", "app": app, "client": client, "headers": headers})


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("127.9.8.7", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("203.0.113.9", False),
        ("::2", False),
        ("::ffff:192.0.2.1", False),
        ("localhost", False),  # a name is not an address: never trusted
        (None, False),
    ],
)
def test_only_loopback_addresses_count_as_local(host, local):
    assert on_loopback(host) is local


def test_without_a_token_metrics_answer_loopback_and_refuse_others(app):
    authorise_scrape(request_from(app, "127.0.0.1"))
    authorise_scrape(request_from(app, "::1"))
    for outsider in ("192.0.2.1", "2001:db8::1", None):
        with pytest.raises(PermissionDenied, match="MEGAMOVIE_METRICS_TOKEN"):
            authorise_scrape(request_from(app, outsider))

    with TestClient(app, client=("203.0.113.9", 50000)) as remote:
        refused = remote.get("/metrics")
    with TestClient(app, client=("127.0.0.1", 50000)) as local:
        served = local.get("/metrics")
    assert refused.status_code == 403
    assert refused.json()["error"] == "permission_denied"
    assert "megamovie_" not in refused.text
    assert served.status_code == 200
    assert served.headers["content-type"].startswith(PROMETHEUS)
    assert "megamovie_jobs" in served.text


@pytest.mark.settings(metrics_token=Secret(TOKEN))
def test_with_a_token_metrics_need_it_from_everyone_even_loopback(app):
    authorise_scrape(request_from(app, "203.0.113.9", f"Bearer {TOKEN}"))
    authorise_scrape(request_from(app, "203.0.113.9", f"bearer  {TOKEN}"))
    for sent in (
        None,
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        TOKEN,
        "Bearer",
    ):
        with pytest.raises(BearerTokenRequired):
            authorise_scrape(request_from(app, "127.0.0.1", sent))
    with pytest.raises(BearerTokenRequired):
        authorise_scrape(request_from(app, "127.0.0.1", "Bearer ünïcode"))

    with TestClient(app, client=("203.0.113.9", 50000)) as client:
        missing = client.get("/metrics")
        wrong = client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
        served = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    for refused in (missing, wrong):
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["error"] == "authentication_required"
        assert TOKEN not in refused.text
    assert served.status_code == 200
    assert served.headers["content-type"].startswith(PROMETHEUS)


def test_the_metrics_token_is_read_from_the_environment_and_never_shown(tmp_path):
    settings = Settings.from_env(
        {"MEGAMOVIE_DATA_DIR": str(tmp_path), "MEGAMOVIE_METRICS_TOKEN": TOKEN}
    )
    assert settings.metrics_token == Secret(TOKEN)
    assert TOKEN not in repr(settings)
    assert Settings.from_env({"MEGAMOVIE_DATA_DIR": str(tmp_path)}).metrics_token is None
