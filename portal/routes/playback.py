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
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from portal.db import renditions
from portal.errors import LicenseRequired, NotFound, ObjectNotFound
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
from portal.licensing.grants import Grant, grant_playback
from portal.parsing import digits
from portal.tokens import PlaybackClaims
from portal.videos import POSTER_ROUTE, Video, fetch_video, segment_timeline, visible_video
from portal.web import services_of, viewer_of
from transcoder.ladder import Rendition
from transcoder.playlists import master_playlist, media_playlist

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
#: Objects sent from their decrypted bytes whole: a failure is a clean 5xx, never garbage.
_STORYBOARD = {STORYBOARD_VTT: "text/vtt; charset=utf-8", STORYBOARD_IMAGE: "image/jpeg"}


async def grant(request: Request) -> Response:
    """The licence decision, sealed into a token; `?stream=` renews an open stream."""
    services = services_of(request)
    stream = request.query_params.get("stream") or None
    granted = await grant_playback(
        services, viewer_of(request), request.path_params["video_id"], stream=stream
    )
    return JSONResponse(grant_body(granted), headers={"Cache-Control": "no-store"})


def stream_base(granted: Grant) -> str:
    """Where everything the grant opens lives: `/stream/{token}/{video_id}`."""
    return f"/stream/{granted.token}/{granted.video.id}"


def grant_body(granted: Grant) -> dict[str, Any]:
    """The grant as the API answers it, and as the watch page hands it to the player."""
    base = stream_base(granted)
    return {
        "url": f"{base}/master.m3u8",
        "storyboard_url": f"{base}/{STORYBOARD_VTT}" if granted.video.has_storyboard else None,
        "expires_at": granted.expires_at.isoformat(),
        "stream": granted.stream,
        "renew_seconds": granted.renew_seconds,
        "licence": granted.licence.as_json(),
    }


def _authorise(request: Request) -> PlaybackClaims:
    """The token's claims, once it is valid for the video in the path (TokenInvalid: 403)."""
    video_id: str = request.path_params["video_id"]
    return services_of(request).tokens.verify(request.path_params["token"], video_id)


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
    video_id = _authorise(request).video
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
    claims = _authorise(request)
    video_id = claims.video
    rendition = request.path_params["rendition"]
    if not valid_rendition(rendition):
        raise NotFound("There is no such rendition.")
    video = await _streaming_video(request, video_id)
    async with services_of(request).engine.connect() as conn:
        rows = await segment_timeline(conn, video_id, rendition)
    if not rows:
        raise NotFound("There is no such rendition, or none of it is ready yet.")
    settings = services_of(request).settings
    ended = video.status == "ready"
    if claims.limit_index is not None:
        # A preview's playlist ends where the preview does: the player stops there and
        # shows the offers, instead of running into refusals.
        rows = [row for row in rows if claims.allows(row[0])]
        ended = ended or any(row[0] == claims.limit_index for row in rows)
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
    claims = _authorise(request)
    rendition, name = request.path_params["rendition"], request.path_params["name"]
    index = segment_index(name)
    if not valid_rendition(rendition) or index is None:
        raise NotFound("There is no such segment.")
    if not claims.allows(index):
        await refuse_past_preview(request, claims.video)
    content_type = "video/mp4" if index == INIT_INDEX else "video/iso.segment"
    path = segment_path(rendition, index)
    response = await send_object(request, claims.video, path, content_type)
    if response.status_code in (200, 206) and request.method == "GET":
        services_of(request).meter.record(claims, index)
    return response


async def refuse_past_preview(request: Request, video_id: str) -> None:
    """402 with the offers: the grant's preview ends before this segment."""
    services = services_of(request)
    video = await fetch_video(services.engine, video_id)
    offers = []
    if video is not None:
        found = await services.plugins.decide("video_offers", portal=services, video=video)
        offers = found.as_json()
    raise LicenseRequired(
        "The free preview ends here. Buy, rent or subscribe to watch the rest.", offers
    )


async def storyboard(request: Request) -> Response:
    video_id = _authorise(request).video
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
    headers_in = request.headers
    conditional = any(h in headers_in for h in ("if-match", "if-none-match", "range"))
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
        # RFC 9110 13.2.2: If-Match, then If-None-Match, then Range (with If-Range).
        if_match = headers_in.get("if-match")
        if if_match is not None and not _matches(if_match, etag, weak=False):
            return Response(status_code=412, headers=headers)
        if_none_match = headers_in.get("if-none-match")
        if if_none_match is not None and _matches(if_none_match, etag, weak=True):
            return Response(status_code=304, headers=headers)
        start, end = 0, size
        byte_range = headers_in.get("range")
        if byte_range and _if_range_ok(request, etag):
            parsed = _parse_range(byte_range, size)
            if parsed == UNSATISFIABLE:
                headers["Content-Range"] = f"bytes */{size}"
                return Response(status_code=416, headers=headers)
            if isinstance(parsed, tuple):
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


def _matches(header: str, etag: str, *, weak: bool) -> bool:
    """Does an If-Match (strong comparison) or If-None-Match (weak) list name `etag`? `*`
    names any current representation, and the object exists by now."""
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*":
            return True
        if tag.startswith("W/"):
            if not weak:
                continue  # a weak tag never matches strongly
            tag = tag[2:]
        if tag == etag:
            return True
    return False


def _if_range_ok(request: Request, etag: str) -> bool:
    condition = request.headers.get("if-range")
    return condition is None or condition.strip() == etag


#: `_parse_range`'s answer for a well-formed range no byte of the object satisfies (416).
UNSATISFIABLE = "unsatisfiable"


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """One `bytes=` range -> (start, end exclusive); UNSATISFIABLE (416); or None when the
    header is to be ignored and the whole object sent: an unknown unit or a malformed range
    (RFC 9110 14.2: a server MAY ignore Range). Several ranges are answered with the first
    one, which RFC 9110 allows."""
    unit, equals, spec = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    first = spec.split(",")[0].strip()
    start_text, dash, end_text = first.partition("-")
    if not dash:
        return None
    if start_text == "":
        suffix = digits(end_text)
        if suffix is None:
            return None
        if suffix == 0 or size == 0:
            return UNSATISFIABLE
        return max(0, size - suffix), size
    start = digits(start_text)
    last = digits(end_text) if end_text else None
    if start is None or (end_text and (last is None or last < start)):
        return None
    if start >= size:
        return UNSATISFIABLE
    return start, size if last is None else min(last + 1, size)


STREAM = "/stream/{token}/{video_id}"

routes = [
    Route("/api/videos/{video_id}/playback", grant, methods=["GET"], name="playback"),
    Route(f"{STREAM}/master.m3u8", master, methods=["GET"], name="master_playlist"),
    Route(f"{STREAM}/{{name:str}}", storyboard, methods=["GET"], name="storyboard"),
    Route(f"{STREAM}/{{rendition}}/index.m3u8", media, methods=["GET"], name="media_playlist"),
    Route(f"{STREAM}/{{rendition}}/{{name}}", segment, methods=["GET"], name="segment"),
    Route(POSTER_ROUTE, poster, methods=["GET"], name="poster"),
]
