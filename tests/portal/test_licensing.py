"""Licensing end to end: offers, the grant's licence, previews enforced where the bytes leave,
concurrent streams, metering, and plugins that replace a decision."""

from __future__ import annotations

import inspect
import re
import sys
import time
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from portal.app import create_app
from portal.db import create_engine, new_id, purchases, subscriptions, utcnow, watched_segments
from portal.licensing import hookspecs
from tests.helpers import add_user, bearer, create_account, pipeline_settings, upload_and_wait
from transcoder.playlists import parse_playlist

DOCS = Path(__file__).resolve().parents[2] / "docs" / "licensing-hooks.md"
PEOPLE = ("maker", "boss", "nobody", "buyer", "renter", "lapsed", "fan", "member", "press")


@pytest.fixture
def settings(tmp_path):
    return pipeline_settings(tmp_path, workers=1)


@pytest.fixture
def film(client, clip):
    """A 2 s film in 1 s segments, and an account for every kind of viewer."""
    roles = {"maker": "creator", "boss": "admin"}
    ids = {name: add_user(client, f"{name}@example.org", roles.get(name, "viewer")).id
           for name in PEOPLE}  # fmt: skip
    auth = {name: bearer(client, f"{name}@example.org") for name in PEOPLE}
    video_id = upload_and_wait(client, auth["maker"], clip.read_bytes())
    client.ids = ids  # type: ignore[attr-defined]
    return client, auth, video_id


def run(client: TestClient, fn, *args):
    return client.portal.call(fn, *args)


def hold(client: TestClient, video_id: str, creator_id: str, ids: dict[str, str]) -> None:
    """The licences each viewer holds, as rows (what the purchase and subscription code
    writes; its own tests are in test_purchases.py)."""
    now = utcnow()
    engine = client.app.state.services.engine

    async def insert() -> None:
        async with engine.begin() as conn:
            for who, kind, first, ends in (
                ("buyer", "buy", None, None),
                ("renter", "rent", now - timedelta(hours=1), now + timedelta(hours=47)),
                ("lapsed", "rent", now - timedelta(hours=49), now - timedelta(hours=1)),
            ):
                await conn.execute(purchases.insert().values(
                    id=new_id(), user_id=ids[who], video_id=video_id, creator_id=creator_id,
                    offer_id=None, kind=kind, amount=199, currency="EUR", created_at=now,
                    first_played_at=first, expires_at=ends, transaction_id=new_id(),
                ))  # fmt: skip
            for who, plan, creator in (("fan", "channel", creator_id), ("member", "pass", None)):
                await conn.execute(subscriptions.insert().values(
                    id=new_id(), user_id=ids[who], plan=plan, creator_id=creator, amount=500,
                    currency="EUR", starts_at=now - timedelta(days=1),
                    ends_at=now + timedelta(days=29), created_at=now, transaction_id=new_id(),
                ))  # fmt: skip

    run(client, insert)


OFFERS = {
    "free": [],
    "buy": [{"kind": "buy", "amount": 499, "currency": "EUR"}],
    "rent": [{"kind": "rent", "amount": 199, "currency": "EUR"}],
    "channel": [{"kind": "channel"}],
    "pass": [{"kind": "pass"}],
}


def expected_full(viewer: str, kind: str) -> bool:
    if kind == "free" or viewer in ("maker", "boss", "buyer", "renter"):
        return True
    return (viewer, kind) in {("fan", "channel"), ("member", "pass")}


def test_every_licence_kind_against_every_viewer_through_the_grant_and_the_segment(film):
    client, auth, video_id = film
    ids = client.ids
    hold(client, video_id, ids["maker"], ids)
    streams: dict[str, str] = {}
    seen = []
    for kind, offers in OFFERS.items():
        put = client.put(f"/api/videos/{video_id}/offers", headers=auth["maker"],
                         json={"preview_seconds": 1, "offers": offers})  # fmt: skip
        assert put.status_code == 200, put.text
        for viewer in ("anonymous", *PEOPLE[:-1]):
            headers = auth.get(viewer, {})
            params = {"stream": streams[viewer]} if viewer in streams else {}
            grant = client.get(f"/api/videos/{video_id}/playback", headers=headers, params=params)
            assert grant.status_code == 200, (kind, viewer, grant.text)
            body = grant.json()
            streams[viewer] = body["stream"]
            full = expected_full(viewer, kind)
            assert body["licence"]["kind"] == ("full" if full else "preview"), (kind, viewer)
            base = body["url"].rsplit("/", 1)[0]
            media = client.get(f"{base}/180p/index.m3u8")
            assert media.status_code == 200
            # The second segment starts at 1 s: past a 1 s preview.
            second = client.get(f"{base}/180p/000001.m4s")
            assert second.status_code == (200 if full else 402), (kind, viewer)
            if not full:
                refusal = second.json()
                assert refusal["error"] == "license_required"
                assert [o["kind"] for o in refusal["offers"]] == [o["kind"] for o in offers]
                assert "#EXT-X-ENDLIST" in media.text
                assert "000001.m4s" not in media.text
                assert client.get(f"{base}/180p/000000.m4s").status_code == 200
            seen.append((kind, viewer, full))
    assert len(seen) == len(OFFERS) * len(PEOPLE)


def test_a_rental_starts_at_the_first_grant_and_the_token_ends_with_it(film):
    client, auth, video_id = film
    ids = client.ids
    client.put(f"/api/videos/{video_id}/offers", headers=auth["maker"],
               json={"offers": OFFERS["rent"], "preview_seconds": 1})  # fmt: skip
    engine = client.app.state.services.engine
    rental = new_id()
    now = utcnow()

    async def rent() -> None:
        async with engine.begin() as conn:
            await conn.execute(purchases.insert().values(
                id=rental, user_id=ids["renter"], video_id=video_id, creator_id=ids["maker"],
                offer_id=None, kind="rent", amount=199, currency="EUR", created_at=now,
                expires_at=now + timedelta(days=30), transaction_id=new_id(),
            ))  # fmt: skip

    async def stored():
        async with engine.connect() as conn:
            return (await conn.execute(select(purchases).where(purchases.c.id == rental))).one()

    run(client, rent)
    assert run(client, stored).first_played_at is None
    grant = client.get(f"/api/videos/{video_id}/playback", headers=auth["renter"]).json()
    row = run(client, stored)
    assert row.first_played_at is not None
    assert row.expires_at - row.first_played_at == timedelta(hours=48)
    assert grant["licence"]["source"] == "rental"
    # A second grant keeps the end the first one set.
    again = client.get(f"/api/videos/{video_id}/playback", headers=auth["renter"],
                       params={"stream": grant["stream"]}).json()  # fmt: skip
    assert run(client, stored).expires_at == row.expires_at
    assert again["licence"]["expires_at"] == grant["licence"]["expires_at"]


def test_a_viewer_may_watch_on_two_screens_not_three(film, settings):
    client, auth, video_id = film
    url = f"/api/videos/{video_id}/playback"
    first = client.get(url, headers=auth["nobody"]).json()
    second = client.get(url, headers=auth["nobody"])
    assert second.status_code == 200
    third = client.get(url, headers=auth["nobody"])
    assert third.status_code == 429
    assert third.json()["error"] == "too_many_streams"
    assert "2 screens" in third.json()["message"]
    # Renewing an open stream is not a new screen.
    assert (
        client.get(url, headers=auth["nobody"], params={"stream": first["stream"]}).status_code
        == 200
    )
    # Anonymous viewers share addresses: they are not limited.
    assert all(client.get(url).status_code == 200 for _ in range(3))


def test_offers_are_validated_field_by_field(film):
    client, auth, video_id = film
    url = f"/api/videos/{video_id}/offers"
    bad = [
        ({"offers": [{"kind": "buy", "amount": -1, "currency": "EUR"}]}, "offers[0].amount"),
        ({"offers": [{"kind": "buy", "amount": 4.99, "currency": "EUR"}]}, "offers[0].amount"),
        ({"offers": [{"kind": "buy", "amount": 499, "currency": "XXX"}]}, "offers[0].currency"),
        ({"offers": [{"kind": "lease", "amount": 499, "currency": "EUR"}]}, "offers[0].kind"),
        ({"offers": [{"kind": "pass", "amount": 5, "currency": "EUR"}]}, "offers[0].amount"),
        ({"offers": [], "preview_seconds": 3600}, "preview_seconds"),
        ({"offers": "buy"}, "offers"),
    ]
    for body, field in bad:
        response = client.put(url, headers=auth["maker"], json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["field"] == field
    assert client.put(url, headers=auth["nobody"], json={"offers": []}).status_code == 403
    assert client.put(url, json={"offers": []}).status_code == 401
    stored = client.put(url, headers=auth["maker"], json={"preview_seconds": 1, "offers": [
        {"kind": "pass"}, {"kind": "buy", "amount": 499, "currency": "EUR"}]}).json()  # fmt: skip
    assert [o["kind"] for o in stored["offers"]] == ["buy", "pass"]
    assert all(o["id"] for o in stored["offers"])
    shown = client.get(f"/api/videos/{video_id}").json()
    assert shown["preview_seconds"] == 1 and shown["offers"] == stored["offers"]
    assert client.put(url, headers=auth["maker"], json={"offers": []}).json()["offers"] == []
    channel = client.put("/api/channel/offers", headers=auth["maker"],
                         json={"amount": 500, "currency": "EUR"})  # fmt: skip
    assert channel.status_code == 200
    maker = client.ids["maker"]
    assert client.get(f"/api/channels/{maker}/offers").json()["price"] == {
        "amount": 500, "currency": "EUR"}  # fmt: skip


def test_metering_counts_each_moment_once_and_never_faster_than_real_time(film):
    client, auth, video_id = film
    services = client.app.state.services
    grant = client.get(f"/api/videos/{video_id}/playback", headers=auth["nobody"]).json()
    base = grant["url"].rsplit("/", 1)[0]
    master = parse_playlist(client.get(grant["url"]).text)
    names = [variant.uri.split("/")[0] for variant in master.variants] or ["180p"]
    # The whole film, twice, in every rendition, as fast as the client can.
    for _ in range(2):
        for name in names:
            for index in (0, 1):
                assert client.get(f"{base}/{name}/{index:06d}.m4s").status_code == 200
    first = run(client, services.meter.flush)
    assert [r.index for r in first] == [0]  # a second of wall time has not passed yet
    assert first[0].licence == "free"  # the pass split counts only what was watched by pass
    time.sleep(first[0].seconds)
    second = run(client, services.meter.flush)
    assert [r.index for r in second] == [1]
    assert run(client, services.meter.flush) == []

    async def rows():
        async with services.engine.connect() as conn:
            query = select(func.count(), func.sum(watched_segments.c.seconds)).where(
                watched_segments.c.video_id == video_id
            )
            return (await conn.execute(query)).one()

    count, seconds = run(client, rows)
    assert count == 2
    assert seconds == pytest.approx(first[0].seconds + second[0].seconds)


def test_every_hook_is_documented_with_its_exact_signature():
    text = DOCS.read_text()
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction):
        if not hasattr(function, "megamovie_spec"):
            continue
        arguments = ", ".join(inspect.signature(function).parameters)
        assert f"### `{name}({arguments})`" in text, f"{name} is not documented"
    documented = set(re.findall(r"^### `(\w+)\(", text, re.MULTILINE))
    declared = {n for n, f in inspect.getmembers(hookspecs, inspect.isfunction)
                if hasattr(f, "megamovie_spec")}  # fmt: skip
    assert documented == declared


def install_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution with a `megamovie` entry point, found on sys.path like any installed
    package (importlib.metadata reads its dist-info)."""
    site = tmp_path / "site"
    dist = site / "megamovie_press_pass-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: megamovie-press-pass\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text("[megamovie]\npress = tests.plugins.press_pass\n")
    monkeypatch.syspath_prepend(str(site))


def test_a_plugin_installed_through_the_entry_point_changes_a_decision(tmp_path, monkeypatch, clip):
    install_entry_point(tmp_path, monkeypatch)
    settings = pipeline_settings(tmp_path, workers=1)
    for email, role in (("maker@example.org", "creator"), ("reporter@press.example", "viewer"),
                        ("nobody@example.org", "viewer")):  # fmt: skip
        create_account(settings, email, role)
    with TestClient(create_app(settings)) as client:
        assert "press" in client.app.state.services.plugins.names()
        maker = bearer(client, "maker@example.org")
        video_id = upload_and_wait(client, maker, clip.read_bytes())
        client.put(f"/api/videos/{video_id}/offers", headers=maker,
                   json={"preview_seconds": 1, "offers": OFFERS["buy"]})  # fmt: skip
        url = f"/api/videos/{video_id}/playback"
        press = client.get(url, headers=bearer(client, "reporter@press.example")).json()
        nobody = client.get(url, headers=bearer(client, "nobody@example.org")).json()
        base = press["url"].rsplit("/", 1)[0]
        past_preview = client.get(f"{base}/180p/000001.m4s")
    assert (press["licence"]["kind"], press["licence"]["source"]) == ("full", "press")
    assert past_preview.status_code == 200
    assert nobody["licence"]["kind"] == "preview"


def test_plugins_named_in_the_setting_are_loaded_and_a_bad_name_is_a_clear_error(tmp_path):
    from portal.errors import PortalError
    from portal.licensing.plugins import Plugins

    plugins = Plugins(["tests.plugins.press_pass"], entry_points=False)
    assert "tests.plugins.press_pass" in plugins.names()
    with pytest.raises(PortalError, match="cannot be imported"):
        Plugins(["no_such_plugin_module"], entry_points=False)
    assert "tests.plugins.press_pass" in sys.modules


@pytest.mark.anyio
async def test_a_stream_nobody_renews_frees_its_place_on_both_databases(engine):
    from portal.errors import TooManyStreams
    from portal.licensing.streams import close_idle_streams, open_stream
    from tests.helpers import insert_user, insert_video

    video = await insert_video(engine, await insert_user(engine), status="ready")
    start = utcnow() - timedelta(minutes=10)

    async def open_at(moment, stream=None):
        return await open_stream(engine, viewer_key="u:ann", video_id=video, stream_id=stream,
                                 limit=2, idle_seconds=150, now=moment)  # fmt: skip

    first = await open_at(start)
    await open_at(start)
    with pytest.raises(TooManyStreams):
        await open_at(start + timedelta(seconds=10))
    # Renewing within the idle time keeps the same stream.
    assert await open_at(start + timedelta(seconds=100), first) == first
    # The other one was not renewed: three minutes on it is over and its place is free.
    later = start + timedelta(seconds=200)
    assert await open_at(later) not in (None, first)
    assert await close_idle_streams(engine, 150) >= 1


def test_watch_time_earned_before_a_clean_shutdown_is_written(app, clip):
    with TestClient(app) as client:
        add_user(client, "maker@example.org", "creator")
        maker = bearer(client, "maker@example.org")
        video_id = upload_and_wait(client, maker, clip.read_bytes())
        grant = client.get(f"/api/videos/{video_id}/playback").json()
        base = grant["url"].rsplit("/", 1)[0]
        assert client.get(f"{base}/180p/000000.m4s").status_code == 200
        engine_url = client.app.state.services.settings.database_url

    # The app has shut down well within MEGAMOVIE_METERING_FLUSH_SECONDS: only its last
    # flush can have written the segment. Read it back through a fresh engine.
    async def count() -> int:
        engine = create_engine(engine_url)
        try:
            async with engine.connect() as conn:
                query = select(func.count()).where(watched_segments.c.video_id == video_id)
                return (await conn.execute(query)).scalar_one()
        finally:
            await engine.dispose()

    assert anyio.run(count) == 1
