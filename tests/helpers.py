"""Plain helpers the tests share: real media made with ffmpeg, settings, accounts, requests.

Fixtures live in the conftest files; the functions they and the tests call live here, so no
test module imports another test module or a conftest.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.testclient import TestClient

from portal.accounts import User, create_user
from portal.db import create_engine, new_id, users, utcnow, videos
from portal.migrations import upgrade
from portal.services import prepare_data_dir
from portal.settings import Settings

POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PASSWORD = "correct horse battery"
TUS = {"Tus-Resumable": "1.0.0"}
# argon2 at its cheapest keeps the suite fast; the production cost is tested where it matters.
FAST_HASHING = {"argon2_time_cost": 1, "argon2_memory_kib": 1024}
#: Bytes that only plaintext media holds: none may be left on disk after processing.
PLAINTEXT_MARKERS = (b"ftyp", b"moov", b"mdat", b"moof", b"Lavf", b"x264")
X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for synchronous code (TestClient, live servers, module
    fixtures): its async SQLAlchemy URL; dropped afterwards."""
    import secrets

    import asyncpg

    name = "mm_test_" + secrets.token_hex(6)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    anyio.run(admin, f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        anyio.run(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- settings ------------------------------------------------------------------------------


def fast_settings(tmp_path: Path, **changes: object) -> Settings:
    """Settings on the test's own data dir, with cheap password hashing."""
    return Settings.from_env(
        {"MEGAMOVIE_DATA_DIR": str(tmp_path / "data")}, **{**FAST_HASHING, **changes}
    )


def pipeline_settings(tmp_path: Path, **changes: object) -> Settings:
    """Settings for media tests: cheap password hashing, the fastest x264 preset, no
    in-process workers unless a test asks for them."""
    return fast_settings(
        tmp_path,
        **{"transcode_preset": "ultrafast", "segment_seconds": 1.0, "workers": 0, **changes},
    )


# -- media ---------------------------------------------------------------------------------


def run_ffmpeg(*args: str) -> None:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", *args], check=True, timeout=120
    )


def make_clip(out: Path, *, seconds: float = 2, size: str = "320x180") -> Path:
    """A real H.264/AAC MP4 made by ffmpeg from its test sources."""
    subprocess.run(
        [
            "ffmpeg", "-nostdin", "-v", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=24",
            "-f", "lavfi", "-i", "sine=frequency=440",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-shortest", str(out),
        ],
        check=True,
        timeout=60,
    )  # fmt: skip
    return out


def ffprobe_json(path: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-protocol_whitelist", "file", "-of", "json", *args, str(path)],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    return dict(json.loads(out))


def files_containing(root: Path, markers: tuple[bytes, ...]) -> list[str]:
    """`name: marker` for every file under `root` holding one of `markers`."""
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.name}: {m!r}" for m in markers if m in data]
    return found


# -- rows straight into the database (for tests below the HTTP layer) ---------------------


async def insert_user(engine: AsyncEngine, role: str = "creator") -> str:
    """A user row straight into the table, for tests below the accounts layer."""
    user_id = new_id()
    async with engine.begin() as conn:
        await conn.execute(
            users.insert().values(
                id=user_id,
                email=f"{user_id}@example.test",
                display_name="Test " + role,
                password_hash="!",  # matches no password: this user cannot log in
                role=role,
                created_at=utcnow(),
            )
        )
    return user_id


async def insert_video(engine: AsyncEngine, creator_id: str, status: str = "queued") -> str:
    video_id = new_id()
    now = utcnow()
    async with engine.begin() as conn:
        await conn.execute(
            videos.insert().values(
                id=video_id,
                creator_id=creator_id,
                title="A test film",
                description="",
                tags="",
                status=status,
                progress=0.0,
                created_at=now,
                updated_at=now,
            )
        )
    return video_id


async def add_video(engine: AsyncEngine, creator_id: str, **fields: Any) -> str:
    """A video row, ready unless `fields` say otherwise."""
    video_id = new_id()
    now = utcnow()
    values = {
        "id": video_id,
        "creator_id": creator_id,
        "title": "Untitled",
        "description": "",
        "tags": "",
        "status": "ready",
        "created_at": now,
        "updated_at": now,
        "ready_at": now,
        **fields,
    }
    async with engine.begin() as conn:
        await conn.execute(videos.insert().values(**values))
    return video_id


def create_account(settings: Settings, email: str, role: str = "creator") -> str:
    """A real account in the settings' database (made before or beside a running app);
    returns the user id."""

    async def create() -> str:
        prepare_data_dir(settings)
        engine = create_engine(settings.database_url)
        try:
            await upgrade(engine)
            user = await create_user(engine, settings, email=email, password=PASSWORD, role=role)
            return user.id
        finally:
            await engine.dispose()

    return anyio.run(create)


# -- through a running app (a TestClient) --------------------------------------------------


def add_user(client: TestClient, email: str, role: str = "viewer", name: str | None = None) -> User:
    """A real account, made through the running app's own services."""
    app = client.app
    return client.portal.call(  # type: ignore[union-attr]
        functools.partial(
            create_user,
            app.state.services.engine,  # type: ignore[attr-defined]
            app.state.settings,  # type: ignore[attr-defined]
            email=email,
            password=PASSWORD,
            role=role,
            display_name=name,
        )
    )


def add_ready_video(client: TestClient, creator_id: str, **fields: Any) -> str:
    """`add_video` from a test that drives the app through a TestClient."""
    fields.setdefault("duration", 60.0)
    engine = client.app.state.services.engine  # type: ignore[attr-defined]
    return client.portal.call(  # type: ignore[union-attr]
        functools.partial(add_video, engine, creator_id, **fields)
    )


def set_video(client: TestClient, video_id: str, **values: object) -> None:
    """Change a video's row under a running app (a state no request can reach quickly)."""

    async def change() -> None:
        async with client.app.state.services.engine.begin() as conn:  # type: ignore[attr-defined]
            await conn.execute(update(videos).where(videos.c.id == video_id).values(**values))

    client.portal.call(change)  # type: ignore[union-attr]


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf-token" content="([^"]*)"', html)
    assert match, "every page carries the CSRF token in a meta tag"
    return match.group(1)


def log_in(
    client: TestClient, email: str, password: str = PASSWORD, next_url: str = "/"
) -> httpx2.Response:
    """Log in through the real form (a session cookie in the client's jar)."""
    token = csrf_from(client.get("/login").text)
    return client.post(
        "/login",
        data={"csrf_token": token, "email": email, "password": password, "next": next_url},
        follow_redirects=False,
    )


def sign_up(
    client: TestClient, email: str, password: str = PASSWORD, role: str = "viewer"
) -> httpx2.Response:
    token = csrf_from(client.get("/signup").text)
    return client.post(
        "/signup",
        data={"csrf_token": token, "email": email, "password": password, "role": role},
        follow_redirects=False,
    )


def bearer(client: Any, email: str) -> dict[str, str]:
    """Authorization header from `POST /api/tokens` (client: TestClient or httpx.Client)."""
    response = client.post("/api/tokens", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


class SignedIn:
    """The app's one `TestClient`, signed in as `user` with an API bearer token: every request
    carries it. Roles share the client (and so the app and its lifespan); each has its own
    token, so they never share a session."""

    def __init__(self, client: TestClient, user: User) -> None:
        self.client = client
        self.user = user
        self.auth = bearer(client, user.email)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx2.Response:
        headers = {**self.auth, **(kwargs.pop("headers", None) or {})}
        return self.client.request(method, url, headers=headers, **kwargs)

    def get(self, url: str, **kwargs: Any) -> httpx2.Response:
        return self.request("GET", url, **kwargs)

    def head(self, url: str, **kwargs: Any) -> httpx2.Response:
        return self.request("HEAD", url, **kwargs)

    def options(self, url: str, **kwargs: Any) -> httpx2.Response:
        return self.request("OPTIONS", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx2.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx2.Response:
        return self.request("PUT", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> httpx2.Response:
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx2.Response:
        return self.request("DELETE", url, **kwargs)


def upload_and_wait(client: Any, auth: dict[str, str], data: bytes) -> str:
    """Upload `data` in one PATCH and wait (60 s at most) until its video is ready."""
    created = client.post("/api/uploads", headers={**TUS, **auth, "Upload-Length": str(len(data))})
    location, video_id = created.headers["location"], created.headers["video-id"]
    body_type = {"Content-Type": "application/offset+octet-stream"}
    done = client.patch(
        location, content=data, headers={**TUS, **auth, **body_type, "Upload-Offset": "0"}
    )
    assert done.status_code == 204, done.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        video = client.get(f"/api/videos/{video_id}", headers=auth).json()
        if video["status"] in ("ready", "failed"):
            break
        time.sleep(0.1)
    assert video["status"] == "ready", video
    return str(video_id)


# -- tus requests --------------------------------------------------------------------------


def meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def create(client, headers, length: int, **metadata: str):
    return client.post(
        "/api/uploads",
        headers={
            **TUS,
            **headers,
            "Upload-Length": str(length),
            "Upload-Metadata": meta(**metadata),
        },
    )


def patch(client, location, headers, offset: int, body: bytes, **extra: str):
    return client.patch(
        location,
        content=body,
        headers={
            **TUS,
            **headers,
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
            **extra,
        },
    )


def count(client, table) -> int:
    async def query() -> int:
        async with client.app.state.services.engine.connect() as conn:
            return await conn.scalar(select(func.count()).select_from(table))

    return client.portal.call(query)


def raw_patch_start(server, path: str, auth: dict[str, str], offset: int, length: int,
                    body: bytes) -> socket.socket:  # fmt: skip
    """Send a PATCH that announces `length` bytes but only `body` of them, and keep it open."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
        f"Authorization: {auth['Authorization']}\r\nUpload-Offset: {offset}\r\n"
        f"Content-Type: application/offset+octet-stream\r\nContent-Length: {length}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


# -- against a live server -----------------------------------------------------------------


class LiveServer:
    """The real portal under uvicorn on a free loopback port, in a background thread."""

    def __init__(self, settings: Settings) -> None:
        import socket
        import threading

        import uvicorn

        from portal.app import create_app
        from portal.server import server_config

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.settings = settings.replace(host="127.0.0.1", port=self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        # The configuration `megamovie serve` runs, time limits included.
        config = server_config(create_app(self.settings), self.settings, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the portal did not start within 30 s")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def tus_upload(base_url: str, auth: dict[str, str], path: Path, **metadata: str) -> str:
    """Upload with the tuspy client in small chunks; returns the video id."""
    from tusclient import client as tus

    # Our own file handle: tuspy leaves the ones it opens from file_path unclosed.
    with open(path, "rb") as stream:
        uploader = tus.TusClient(f"{base_url}/api/uploads", headers=auth).uploader(
            file_stream=stream, chunk_size=64 * 1024, metadata=metadata
        )
        uploader.upload()
    head = httpx.head(uploader.url, headers={"Tus-Resumable": "1.0.0", **auth})
    assert head.status_code == 200
    return head.headers["video-id"]


def wait_until_done(client: httpx.Client, video_id: str, auth: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        video = client.get(f"/api/videos/{video_id}", headers=auth).json()
        if video["status"] in ("ready", "failed"):
            return dict(video)
        time.sleep(0.2)
    raise AssertionError(f"still {video['status']} after 90 s")


def sign_up_creator(page: Any, base: str, email: str, name: str) -> None:
    """Sign up through the real form as a creator (in a browser); lands on the upload page."""
    page.goto(f"{base}/signup")
    page.fill('input[name="email"]', email)
    page.fill('input[name="display_name"]', name)
    page.fill('input[name="password"]', "a long enough password")
    page.check('input[name="role"][value="creator"]')
    page.click('button[type="submit"]')
    page.wait_for_url(f"{base}/upload")


# -- processes ------------------------------------------------------------------------------

#: Long enough after a kill for the kernel's death signal and the janitor's cleanup, short
#: enough that a regression fails fast.
GRACE_SECONDS = 5.0


def live_processes_naming(needle: str) -> list[int]:
    """Pids of processes, zombies excepted, whose command line contains `needle`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle.encode() in cmdline and state not in (b"Z", b"X"):
            found.append(int(proc.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def eventually(check: Callable[[], bool], seconds: float = GRACE_SECONDS) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()
