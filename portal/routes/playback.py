"""Playback: the grant, per-request playlists, and the decrypting segment stream.

`GET /api/videos/{id}/playback` runs the licence check and answers a short-lived token bound
to viewer and video. Everything the player fetches after that lives under
`/stream/{token}/{video_id}/...`, so the playlists can use relative URLs and players that drop
query strings still send the token. The segment endpoint is the hot path: it checks the
token (an HMAC, no database), asks the vault for the size, decrypts and sends.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from portal.db import renditions, segments
from portal.errors import NotFound, ObjectNotFound
from portal.layout import (
    INIT_INDEX,
    INIT_SEGMENT,
    POSTER,
    STORYBOARD_IMAGE,
    STORYBOARD_VTT,
    segment_index,
    segment_name,
    segment_path,
    valid_rendition,
)
from portal.videos import Video, fetch_video, playable_video, visible_video
from portal.views import count_view
from portal.web import services_of, viewer_of
from transcoder.ladder import Rendition
from transcoder.playlists import master_playlist, media_playlist

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
#: Objects sent from their decrypted bytes whole: a failure is a clean 5xx, never garbage.
_STORYBOARD = {STORYBOARD_VTT: "text/vtt; charset=utf-8", STORYBOARD_IMAGE: "image/jpeg"}


async def grant(request: Request) -> Response:
    services = services_of(request)
    viewer = viewer_of(request)
    video = await playable_video(services.engine, viewer, request.path_params["video_id"])
    token, expires_at = services.tokens.issue(viewer.user_id, video.id)
    await count_view(services.engine, viewer.key, video.id)
    base = f"/stream/{token}/{video.id}"
    return JSONResponse(
        {
            "url": f"{base}/master.m3u8",
            "storyboard_url": f"{base}/{STORYBOARD_VTT}" if video.has_storyboard else None,
            "expires_at": datetime.fromtimestamp(expires_at, UTC).isoformat(),
        },
        headers={"Cache-Control": "no-store"},
    )


def _authorise(request: Request) -> str:
    """The video id, once the token in the path is valid for it (TokenInvalid: 403)."""
    video_id: str = request.path_params["video_id"]
    services_of(request).tokens.verify(request.path_params["token"], video_id)
    return video_id


async def _streaming_video(request: Request, video_id: str) -> Video:
    """The token already proved the grant; the film must still be playable (not deleted,
    not failed since)."""
    video = await fetch_video(services_of(request).engine, video_id)
    if video is None or not video.can_play:
        raise NotFound("This video is no longer available.")
    return video


def _playlist(text: str, *, ended: bool) -> Response:
    # A growing (EVENT) playlist must be re-fetched; a finished one may be kept a little.
    cache = "private, max-age=60" if ended else "private, no-cache"
    return Response(text, media_type=PLAYLIST_TYPE, headers={"Cache-Control": cache})


async def master(request: Request) -> Response:
    video_id = _authorise(request)
    video = await _streaming_video(request, video_id)
    async with services_of(request).engine.connect() as conn:
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
    return _playlist(text, ended=video.status == "ready")


async def media(request: Request) -> Response:
    video_id = _authorise(request)
    rendition = request.path_params["rendition"]
    if not valid_rendition(rendition):
        raise NotFound("There is no such rendition.")
    video = await _streaming_video(request, video_id)
    async with services_of(request).engine.connect() as conn:
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
    settings = services_of(request).settings
    ended = video.status == "ready"
    # A growing playlist must keep one target duration; the spec rounds each EXTINF.
    target = max(math.ceil(settings.segment_seconds), *(math.floor(d + 0.5) for _, d in rows))
    text = media_playlist(
        [(idx, duration) for idx, duration in rows],
        init_uri=INIT_SEGMENT,
        uri_for=segment_name,
        target_duration=target,
        ended=ended,
    )
    return _playlist(text, ended=ended)


async def segment(request: Request) -> Response:
    video_id = _authorise(request)
    rendition, name = request.path_params["rendition"], request.path_params["name"]
    index = segment_index(name)
    if not valid_rendition(rendition) or index is None:
        raise NotFound("There is no such segment.")
    content_type = "video/mp4" if index == INIT_INDEX else "video/iso.segment"
    return await send_object(request, video_id, segment_path(rendition, index), content_type)


async def storyboard(request: Request) -> Response:
    video_id = _authorise(request)
    name = request.path_params["name"]
    if name not in _STORYBOARD:
        raise NotFound("There is no such file.")
    return await send_object(request, video_id, name, _STORYBOARD[name])


async def poster(request: Request) -> Response:
    """Seen by whoever may see the film (portal.videos): public films' posters are public."""
    video = await visible_video(
        services_of(request).engine, viewer_of(request), request.path_params["video_id"]
    )
    if not video.has_poster:
        raise NotFound("There is no poster for this video.")
    cache = "public, max-age=3600" if video.is_public else "private, no-cache"
    return await send_object(request, video.id, POSTER, "image/jpeg", cache=cache)


async def send_object(
    request: Request, video_id: str, path: str, content_type: str, *, cache: str = "private"
) -> Response:
    """Decrypt a vault object (or the requested byte range of it) and send it.

    The bytes are decrypted in full *before* the status line goes out: a tampered object is
    a logged 5xx, never a 200 with garbage. Stored objects here are segments and images of a
    few MB, so holding one in memory is fine.
    """
    services = services_of(request)
    vault = services.vault
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
    # `vault.read` authenticates every byte before we send the first one.
    if request.method == "GET":
        services.metrics.count_segment(len(body))
    return BufferResponse(body, status_code=status, media_type=content_type, headers=headers)


class BufferResponse(Response):
    """A response whose body is the vault's buffer itself (`bytes` or `bytearray`), sent
    without a copy. Never a memoryview: granian sends those ~20x slower (~17 ms of CPU a
    segment against ~0.7 ms for bytes or bytearray); uvicorn takes all three alike."""

    def render(self, content: Any) -> bytes | memoryview:
        if not isinstance(content, bytes | bytearray):
            raise TypeError(f"BufferResponse takes bytes or bytearray, not {type(content)}")
        return content  # type: ignore[return-value]


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
    Route(f"/media/{{video_id}}/{POSTER}", poster, methods=["GET"], name="poster"),
]
