"""Accounts: sign-up, log-in, log-out, roles, password hashing, the `users create` command."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from starlette.testclient import TestClient

from portal.accounts import authenticate, create_user
from portal.db import create_engine, users
from portal.errors import Conflict, ValidationFailed
from portal.migrations import upgrade
from portal.settings import Settings
from tests.helpers import (
    PASSWORD,
    add_user,
    csrf_from,
    log_in,
    sign_up,
)


def test_signup_as_creator_logs_in_and_leads_to_the_upload_page(client):
    response = sign_up(client, "Ann@Example.org", role="creator")
    assert response.status_code == 303
    assert response.headers["location"] == "/upload"
    page = client.get("/upload")
    assert page.status_code == 200
    assert "Upload films" in page.text
    assert "ann" in page.text  # the display name defaults to the email's local part


def test_signup_as_viewer_cannot_upload(client):
    assert sign_up(client, "val@example.org").headers["location"] == "/"
    page = client.get("/upload")
    assert page.status_code == 403
    assert "needs a creator or admin account" in page.text


def test_signup_refuses_a_short_password_and_says_why(client):
    response = sign_up(client, "short@example.org", password="123456789")
    assert response.status_code == 422
    assert "at least 10 characters" in response.text
    assert 'value="short@example.org"' in response.text  # what was typed is kept


def test_signup_refuses_a_duplicate_email_whatever_its_case(client):
    assert sign_up(client, "dup@example.org").status_code == 303
    client.cookies.clear()
    response = sign_up(client, "DUP@example.ORG")
    assert response.status_code == 409
    assert "already an account for dup@example.org" in response.text


def test_signup_cannot_make_an_admin(client):
    response = sign_up(client, "sneaky@example.org", role="admin")
    assert response.status_code == 422
    assert "mm_session" not in response.headers.get("set-cookie", "")


def test_login_sends_you_where_you_were_going(client):
    add_user(client, "lee@example.org", role="creator")
    response = log_in(client, "LEE@example.org", next_url="/dashboard")
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard"
    assert client.get("/dashboard").status_code == 200


def test_wrong_password_and_unknown_email_get_the_same_answer(client):
    add_user(client, "kim@example.org")
    wrong = log_in(client, "kim@example.org", password="not the password")
    unknown = log_in(client, "nobody@example.org", password="not the password")
    assert wrong.status_code == unknown.status_code == 401
    message = "That email and password do not match an account."
    assert message in wrong.text
    assert message in unknown.text
    assert "mm_session" not in wrong.headers.get("set-cookie", "")


@pytest.mark.anyio
async def test_unknown_email_is_checked_against_a_hash_of_the_same_cost(tmp_path):
    # An unknown email must cost a full argon2id verification, like a wrong password, so
    # response times do not reveal which emails have accounts. Checked by the parameters of
    # the hash each path verifies against, not by timing (tests never assert on timings).
    from argon2 import extract_parameters

    from portal.accounts import _dummy_hash

    settings = Settings.from_env({"MEGAMOVIE_DATA_DIR": str(tmp_path)})
    engine = create_engine(settings.database_url)
    await upgrade(engine)
    await create_user(engine, settings, email="t@example.org", password=PASSWORD)
    async with engine.connect() as conn:
        stored = (await conn.execute(select(users.c.password_hash))).scalar_one()
    await engine.dispose()
    dummy = _dummy_hash(settings.argon2_time_cost, settings.argon2_memory_kib)
    assert extract_parameters(dummy) == extract_parameters(stored)
    assert extract_parameters(stored).type.name == "ID"


def test_logout_kills_the_session_even_for_a_replayed_cookie(client):
    add_user(client, "out@example.org", role="creator")
    log_in(client, "out@example.org")
    stolen = client.cookies.get("mm_session")
    page = client.get("/dashboard")
    response = client.post(
        "/logout", data={"csrf_token": csrf_from(page.text)}, follow_redirects=False
    )
    assert response.status_code == 303
    assert client.cookies.get("mm_session") is None
    client.cookies.set("mm_session", stolen)
    replay = client.get("/dashboard")
    assert replay.status_code == 401
    assert "Log in" in replay.text


@pytest.mark.anyio
async def test_create_user_checks_email_and_password(settings):
    engine = create_engine(settings.database_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await upgrade(engine)
    with pytest.raises(ValidationFailed, match="not an email address"):
        await create_user(engine, settings, email="no-at-sign", password=PASSWORD)
    with pytest.raises(ValidationFailed, match="Role must be one of"):
        await create_user(engine, settings, email="r@example.org", password=PASSWORD, role="god")
    user = await create_user(engine, settings, email=" Mixed@Case.ORG ", password=PASSWORD)
    assert user.email == "mixed@case.org"
    with pytest.raises(Conflict):
        await create_user(engine, settings, email="mixed@case.org", password=PASSWORD)
    await engine.dispose()


@pytest.mark.anyio
async def test_password_is_rehashed_when_the_cost_changes(settings):
    engine = create_engine(settings.database_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await upgrade(engine)
    await create_user(engine, settings, email="re@example.org", password=PASSWORD)
    stronger = settings.replace(argon2_time_cost=2, argon2_memory_kib=2048)
    user = await authenticate(engine, stronger, "re@example.org", PASSWORD)
    async with engine.connect() as conn:
        stored = (await conn.execute(users.select().where(users.c.id == user.id))).one()
    await engine.dispose()
    assert stored.password_hash.startswith("$argon2id$")
    assert "m=2048,t=2,p=1" in stored.password_hash


def test_users_create_command_reads_the_password_from_stdin(settings, app, monkeypatch):
    from portal.cli import main

    monkeypatch.setenv("MEGAMOVIE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("MEGAMOVIE_ARGON2_TIME_COST", "1")
    monkeypatch.setenv("MEGAMOVIE_ARGON2_MEMORY_KIB", "1024")
    runner = CliRunner()
    result = runner.invoke(
        main, ["users", "create", "Boss@Example.org", "--role", "admin"], input=PASSWORD + "\n"
    )
    assert result.exit_code == 0, result.output
    assert "boss@example.org" in result.output
    assert PASSWORD not in result.output
    again = runner.invoke(main, ["users", "create", "boss@example.org"], input=PASSWORD + "\n")
    assert again.exit_code != 0
    assert "already an account" in again.output
    short = runner.invoke(main, ["users", "create", "s@example.org"], input="short\n")
    assert short.exit_code != 0
    assert "at least 10 characters" in short.output

    with TestClient(app) as client:
        assert log_in(client, "boss@example.org").status_code == 303
        assert client.get("/dashboard").status_code == 200  # admins may upload too
