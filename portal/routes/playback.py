"""Playback: the grant, per-request playlists, and the decrypting segment stream.

`GET /api/videos/{id}/playback` runs the licence check and answers a short-lived token bound
to viewer and video. Everything the player fetches after that lives under
`/stream/{token}/{video_id}/...`, so the playlists can use relative URLs and players that drop
query strings still send the token. The segment endpoint is the hot path: it checks the
token (an HMAC, no database), asks the vault for the size, decrypts and sends.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from portal.accounts import User
from portal.auth import current_user
from portal.db import renditions, segments, utcnow, videos, views
from portal.errors import Conflict, NotFound, ObjectNotFound
from portal.processing import segment_path
from portal.routes.videos import fetch_video, visible_video
from portal.security import client_ip
from portal.signing import load_secret_key
from portal.tokens import PlaybackTokens
from transcoder.ladder import Rendition
from transcoder.playlists import master_playlist, media_playlist

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
_RENDITION = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
_MEDIA_FILE = re.compile(r"^(init\.mp4|[0-9]{6}\.m4s)$")
#: A viewer's views of one video count at most once in this long (grant renewals, reloads).
VIEW_WINDOW = timedelta(hours=24)
#: Objects sent from their decrypted bytes whole: a failure is a clean 5xx, never garbage.
_STORYBOARD = {"storyboard.vtt": "text/vtt; charset=utf-8", "storyboard.jpg": "image/jpeg"}


def check_license(request: Request, viewer: User | None, video: RowMapping) -> None:
    """May `viewer` (None: not logged in) watch `video`? Raises LicenseRequired if not.

    Every ready or playable video is free for now; this one function is what the licensing
    hooks will replace.
    """


def viewer_key(request: Request, viewer: User | None) -> str:
    """Who a view is counted for: the user, or a keyed hash of an anonymous client's address.

    The hash is keyed with the portal's secret, so the `views` table holds no raw IP and an
    address cannot be recovered from it by hashing all 2**32 candidates.
    """
    if viewer is not None:
        return f"u:{viewer.id}"
    state = request.app.state
    key = getattr(state, "view_key", None)
    if key is None:
        key = hmac.new(load_secret_key(state.settings), b"mm.views", hashlib.sha256).digest()
        state.view_key = key
    return "a:" + hmac.new(key, client_ip(request).encode(), hashlib.sha256).hexdigest()


async def count_view(
    engine: AsyncEngine, viewer: str, video_id: str, now: datetime | None = None
) -> bool:
    """Count a view of `video_id` by `viewer` unless one was counted in the last VIEW_WINDOW.

    Returns whether it counted. One upsert decides, atomically on both databases: it inserts
    the viewer's row, or moves its time forward only when the old one is a window old, and
    returns a row only when it wrote one; then the video's counter goes up.
    """
    now = utcnow() if now is None else now
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    values = insert(views).values(viewer_key=viewer, video_id=video_id, counted_at=now)
    statement = values.on_conflict_do_update(
        index_elements=[views.c.viewer_key, views.c.video_id],
        set_={"counted_at": values.excluded.counted_at},
        where=views.c.counted_at <= now - VIEW_WINDOW,
    ).returning(views.c.video_id)
    async with engine.begin() as conn:
        if (await conn.execute(statement)).first() is None:
            return False
        await conn.execute(
            update(videos).where(videos.c.id == video_id).values(views=videos.c.views + 1)
        )
    return True


def _playable(video: RowMapping) -> bool:
    return video["status"] == "ready" or (video["status"] == "processing" and video["playable"])


async def grant(request: Request) -> Response:
    video = await visible_video(request, request.path_params["video_id"])
    if not _playable(video):
        raise Conflict("This video is not ready to play yet; try again when processing is done.")
    viewer = current_user(request)
    check_license(request, viewer, video)
    tokens: PlaybackTokens = request.app.state.tokens
    token, expires_at = tokens.issue(viewer.id if viewer else None, video["id"])
    await count_view(request.app.state.engine, viewer_key(request, viewer), video["id"])
    base = f"/stream/{token}/{video['id']}"
    return JSONResponse(
        {
            "url": f"{base}/master.m3u8",
            "storyboard_url": f"{base}/storyboard.vtt" if video["has_storyboard"] else None,
            "expires_at": datetime.fromtimestamp(expires_at, UTC).isoformat(),
        },
        headers={"Cache-Control": "no-store"},
    )


def _authorise(request: Request) -> str:
    """The video id, once the token in the path is valid for it (TokenInvalid: 403)."""
    video_id: str = request.path_params["video_id"]
    request.app.state.tokens.verify(request.path_params["token"], video_id)
    return video_id


async def _streaming_video(request: Request, video_id: str) -> RowMapping:
    video = await fetch_video(request.app.state.engine, video_id)
    if video is None or not _playable(video):
        raise NotFound("This video is no longer available.")
    return video


def _playlist(text: str, *, ended: bool) -> Response:
    # A growing (EVENT) playlist must be re-fetched; a finished one may be kept a little.
    cache = "private, max-age=60" if ended else "private, no-cache"
    return Response(text, media_type=PLAYLIST_TYPE, headers={"Cache-Control": cache})


async def master(request: Request) -> Response:
    video_id = _authorise(request)
    video = await _streaming_video(request, video_id)
    async with request.app.state.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(renditions)
                .where(renditions.c.video_id == video_id)
                .order_by(renditions.c.position)
            )
        ).mappings()
        ladder = [
            Rendition(
                name=r["name"], width=r["width"], height=r["height"], fps=r["fps"],
                # Only "has video" matters to the playlist; the exact encoder target does not.
                video_bitrate=r["average_bandwidth"] if r["width"] else 0,
                audio_bitrate=0, bandwidth=r["bandwidth"],
                average_bandwidth=r["average_bandwidth"], codecs=r["codecs"],
            )
            for r in rows
        ]  # fmt: skip
    text = master_playlist(ladder, lambda r: f"{r.name}/index.m3u8")
    return _playlist(text, ended=video["status"] == "ready")


async def media(request: Request) -> Response:
    video_id = _authorise(request)
    rendition = request.path_params["rendition"]
    if not _RENDITION.match(rendition):
        raise NotFound("There is no such rendition.")
    video = await _streaming_video(request, video_id)
    async with request.app.state.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(segments.c.idx, segments.c.duration)
                .where(
                    segments.c.video_id == video_id,
                    segments.c.rendition == rendition,
                    segments.c.idx >= 0,
                )
                .order_by(segments.c.idx)
            )
        ).all()
    if not rows:
        raise NotFound("There is no such rendition, or none of it is ready yet.")
    settings = request.app.state.settings
    ended = video["status"] == "ready"
    # A growing playlist must keep one target duration; the spec rounds each EXTINF.
    target = max(math.ceil(settings.segment_seconds), *(math.floor(d + 0.5) for _, d in rows))
    text = media_playlist(
        [(idx, duration) for idx, duration in rows],
        init_uri="init.mp4",
        uri_for=lambda idx: f"{idx:06d}.m4s",
        target_duration=target,
        ended=ended,
    )
    return _playlist(text, ended=ended)


async def segment(request: Request) -> Response:
    video_id = _authorise(request)
    rendition, name = request.path_params["rendition"], request.path_params["name"]
    if not _RENDITION.match(rendition) or not _MEDIA_FILE.match(name):
        raise NotFound("There is no such segment.")
    content_type = "video/mp4" if name == "init.mp4" else "video/iso.segment"
    path = segment_path(rendition, -1 if name == "init.mp4" else int(name[:6]))
    return await send_object(request, video_id, path, content_type)


async def storyboard(request: Request) -> Response:
    video_id = _authorise(request)
    name = request.path_params["name"]
    if name not in _STORYBOARD:
        raise NotFound("There is no such file.")
    return await send_object(request, video_id, name, _STORYBOARD[name])


async def poster(request: Request) -> Response:
    """Public for ready videos: the catalog shows posters to everyone."""
    video_id = request.path_params["video_id"]
    video = await fetch_video(request.app.state.engine, video_id)
    if video is None or video["status"] != "ready" or not video["has_poster"]:
        raise NotFound("There is no poster for this video.")
    return await send_object(
        request, video_id, "poster.jpg", "image/jpeg", cache="public, max-age=3600"
    )


async def send_object(
    request: Request, video_id: str, path: str, content_type: str, *, cache: str = "private"
) -> Response:
    """Decrypt a vault object (or the requested byte range of it) and send it.

    The bytes are decrypted in full *before* the status line goes out: a tampered object is
    a logged 5xx, never a 200 with garbage. Stored objects here are segments and images of a
    few MB, so holding one in memory is fine.
    """
    vault = request.app.state.vault
    conditional = "if-none-match" in request.headers or "range" in request.headers
    try:
        if conditional:
            size = await vault.size(video_id, path)
        else:
            # The hot path: a plain GET of a whole object is one storage read, and the size
            # is the length of what authenticated; no separate size lookup.
            body = await vault.read(video_id, path)
            size = len(body)
    except ObjectNotFound:
        raise NotFound("There is no such segment.") from None
    etag = _etag(video_id, path, size)
    headers = {"ETag": etag, "Cache-Control": cache, "Accept-Ranges": "bytes"}
    status = 200
    if conditional:
        if etag in _etags(request.headers.get("if-none-match")):
            return Response(status_code=304, headers=headers)
        start, end = 0, size
        byte_range = request.headers.get("range")
        if byte_range and _if_range_ok(request, etag):
            parsed = _parse_range(byte_range, size)
            if parsed is None:
                headers["Content-Range"] = f"bytes */{size}"
                return Response(status_code=416, headers=headers)
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        # Only the chunks covering the range are read and opened.
        body = await vault.read(video_id, path, start, end) if end > start else b""
    # `vault.read` authenticates every byte before we send the first one. The body is
    # `bytes`, not the vault's memoryview: granian sends memoryview bodies ~16x slower
    # (measured with benchmarks/stream.py); uvicorn is indifferent.
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None and request.method == "GET":
        metrics.count_segment(len(body))
    return Response(body, status_code=status, media_type=content_type, headers=headers)


def _etag(video_id: str, path: str, size: int) -> str:
    """Objects never change once written (a re-transcode rewrites every segment, with new
    sizes), so the name and size make a strong validator without reading the bytes."""
    tag = hashlib.blake2b(f"{video_id}/{path}/{size}".encode(), digest_size=12).hexdigest()
    return f'"{tag}"'


def _etags(header: str | None) -> set[str]:
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


def _if_range_ok(request: Request, etag: str) -> bool:
    condition = request.headers.get("if-range")
    return condition is None or condition.strip() == etag


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One `bytes=` range -> (start, end exclusive); None when unsatisfiable. Several
    ranges are answered with the first one, which RFC 9110 allows."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    first = spec.split(",")[0].strip()
    start_text, dash, end_text = first.partition("-")
    try:
        if not dash:
            return None
        if start_text == "":
            suffix = int(end_text)
            if suffix <= 0 or size == 0:
                return None
            return max(0, size - suffix), size
        start = int(start_text)
        end = int(end_text) + 1 if end_text else size
    except ValueError:
        return None
    if start < 0 or start >= size or end <= start:
        return None
    return start, min(end, size)


STREAM = "/stream/{token}/{video_id}"

routes = [
    Route("/api/videos/{video_id}/playback", grant, methods=["GET"], name="playback"),
    Route(f"{STREAM}/master.m3u8", master, methods=["GET"], name="master_playlist"),
    Route(f"{STREAM}/{{name:str}}", storyboard, methods=["GET"], name="storyboard"),
    Route(f"{STREAM}/{{rendition}}/index.m3u8", media, methods=["GET"], name="media_playlist"),
    Route(f"{STREAM}/{{rendition}}/{{name}}", segment, methods=["GET"], name="segment"),
    Route("/media/{video_id}/poster.jpg", poster, methods=["GET"], name="poster"),
]
