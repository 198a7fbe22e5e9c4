def test_healthz_answers_ok_when_the_database_is_up(client, settings):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "up", "storage": "up"}
    assert (settings.data_dir.stat().st_mode & 0o777) == 0o700


def test_unknown_api_path_gets_a_json_404(client):
    response = client.get("/api/nope")
    assert response.status_code == 404
    assert response.json()["error"] == "http_error"


def test_live_server_serves_over_real_http(live_server):
    import httpx

    response = httpx.get(f"{live_server.url}/healthz")
    assert response.status_code == 200


def test_ids_are_letters_and_digits_so_they_never_look_like_options():
    from portal.db import new_id

    ids = {new_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 16 and i.isalnum() and i.isascii() for i in ids)
