"""The watch, upload and dashboard pages, and saving where a viewer stopped watching.

Pages carry their configuration in `data-` attributes for our scripts: the CSP forbids inline
scripts, so nothing is written into a `<script>` block.

The watch page is the first-frame path: it issues the playback grant while it renders and hands
it to the player (`data-grant`), picks the rendition to start on, and lists what the player
fetches first (the master playlist, that rendition's playlist, init segment and first segment)
as `<link rel=preload>`, so the browser fetches them while hls.js loads. See docs/api.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from portal.auth import current_user, require_role, require_user
from portal.creator_stats import film_stats
from portal.db import renditions, utcnow, videos, watch_progress
from portal.errors import PortalError, ValidationFailed
from portal.layout import INIT_INDEX, INIT_SEGMENT, segment_name
from portal.licensing.grants import Grant, grant_playback
from portal.licensing.offers import channel_plan, load_offers
from portal.parsing import digits, exact_shape
from portal.payouts import creator_statements
from portal.routes.playback import grant_body, stream_base
from portal.videos import Video, segment_timeline, visible_video
from portal.web import read_json, render, services_of, viewer_of

#: Bytes of `PUT /api/videos/{id}/position`: `{"position": 93.5}` and some room.
POSITION_BODY_LIMIT = 1024

#: The player keeps the bandwidth it measured (bits/s) in this cookie, so the next watch page
#: can start on a rendition that line fills fast.
BANDWIDTH_COOKIE = "mm_bw"
#: A first visit's guess: a modest broadband line.
DEFAULT_BANDWIDTH = 5_000_000
#: Bounds on what the cookie may claim.
MIN_BANDWIDTH, MAX_BANDWIDTH = 100_000, 1_000_000_000
#: The stream the last watch page of a film opened in this browser (path-scoped to that
#: film's page): a reload renews it instead of opening another, so reloading never uses up
#: the viewer's concurrent streams.
STREAM_COOKIE = "mm_stream"
#: Start on the highest rendition whose first segment arrives within this many seconds at the
#: estimated bandwidth (hls.js climbs from there after the first segment).
START_FILL_SECONDS = 1.0


@dataclass
class StartPlan:
    """How the player starts: the grant, the rendition, what the page preloads."""

    grant: dict[str, Any] | None = None
    rendition: str = ""
    bandwidth: int = DEFAULT_BANDWIDTH
    preloads: list[str] = field(default_factory=list)

    @property
    def grant_json(self) -> str:
        return json.dumps(self.grant, separators=(",", ":")) if self.grant else ""


def estimated_bandwidth(request: Request) -> int:
    measured = digits(request.cookies.get(BANDWIDTH_COOKIE, ""))
    if measured is None:
        return DEFAULT_BANDWIDTH
    return min(max(measured, MIN_BANDWIDTH), MAX_BANDWIDTH)


def is_speculative(request: Request) -> bool:
    """A prefetch or prerender the browser may throw away, or a HEAD (a link checker): it
    gets no grant (no view, no stream); the player asks for one if the page is ever shown."""
    if request.method == "HEAD":
        return True
    purpose = request.headers.get("sec-purpose") or request.headers.get("purpose") or ""
    return "prefetch" in purpose.lower()


async def start_plan(request: Request, video: Video, resume: float) -> StartPlan:
    """Issue the grant while the page renders, and plan the first fetches. A grant the
    licensing refuses (not playable yet, too many streams, ...) is left to the player, which
    asks the API and shows the answer."""
    bandwidth = estimated_bandwidth(request)
    plan = StartPlan(bandwidth=bandwidth)
    if not video.can_play or is_speculative(request):
        return plan
    services = services_of(request)
    try:
        granted = await grant_playback(
            services, viewer_of(request), video.id, stream=request.cookies.get(STREAM_COOKIE)
        )
    except PortalError:
        return plan
    plan.grant = grant_body(granted)
    plan.preloads.append(plan.grant["url"])
    async with services.engine.connect() as conn:
        ladder = (
            await conn.execute(
                select(renditions.c.name, renditions.c.bandwidth)
                .where(renditions.c.video_id == video.id, renditions.c.width > 0)
                .order_by(renditions.c.bandwidth)
            )
        ).all()
        if not ladder:
            return plan
        seconds = services.settings.segment_seconds
        fits = [r.name for r in ladder if r.bandwidth * seconds <= bandwidth * START_FILL_SECONDS]
        plan.rendition = fits[-1] if fits else ladder[0].name
        timeline = await segment_timeline(conn, video.id, plan.rendition, with_init=True)
    fetches = _first_fetches(granted, plan.rendition, timeline, resume)
    if not fetches:
        # Not transcoded that far yet: hls.js starts where it would anyway.
        plan.rendition = ""
    plan.preloads.extend(fetches)
    return plan


def _first_fetches(
    granted: Grant, rendition: str, rows: Sequence[tuple[int, float]], resume: float
) -> list[str]:
    """The rendition's playlist, init segment and the segment playback starts in, when they
    exist and the licence lets the player have them."""
    base = f"{stream_base(granted)}/{rendition}"
    if not any(idx == INIT_INDEX for idx, _ in rows):
        return []
    fetches = [f"{base}/index.m3u8", f"{base}/{INIT_SEGMENT}"]
    licence = granted.licence
    start = 0.0
    for idx, duration in rows:
        if idx < 0:
            continue
        if start + duration > resume:
            if licence.full or start < (licence.preview_seconds or 0):
                fetches.append(f"{base}/{segment_name(idx)}")
            break
        start += duration
    return fetches


async def watch(request: Request) -> Response:
    video_id = request.path_params["video_id"]
    engine = services_of(request).engine
    video = await visible_video(engine, viewer_of(request), video_id)
    position = 0.0
    user = current_user(request)
    if user is not None:
        async with engine.connect() as conn:
            saved = (
                await conn.execute(
                    select(watch_progress.c.position).where(
                        watch_progress.c.user_id == user.id,
                        watch_progress.c.video_id == video_id,
                    )
                )
            ).scalar_one_or_none()
        # Starting a finished film from its last seconds helps nobody: start it over.
        if saved and not (video.duration and saved > video.duration - 5):
            position = float(saved)
    settings = services_of(request).settings
    start = await start_plan(request, video, position)
    response = render(
        request,
        "watch.html",
        {
            "video": video,
            "resume": position,
            "start": start,
            "pass_price": {"amount": settings.pass_amount, "currency": settings.pass_currency},
            "channel_price": await channel_plan(engine, video.creator_id),
        },
    )
    if start.grant is not None:
        response.set_cookie(
            STREAM_COOKIE,
            start.grant["stream"],
            max_age=int(settings.stream_idle_seconds),
            path=request.app.url_path_for("watch", video_id=video.id),
            httponly=True,
            samesite="lax",
            secure=settings.secure_cookies,
        )
    return response


async def upload(request: Request) -> Response:
    require_role(request, "creator", "admin")
    settings = services_of(request).settings
    return render(request, "upload.html", {"quota_bytes": settings.quota_bytes})


async def dashboard(request: Request) -> Response:
    user = require_role(request, "creator", "admin")
    query = (
        select(videos)
        .where(videos.c.creator_id == user.id)
        .order_by(videos.c.created_at.desc(), videos.c.id)
    )
    services = services_of(request)
    engine = services.engine
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    ids = [row.id for row in rows]
    offers = {row.id: await load_offers(engine, row.id, row.preview_seconds) for row in rows}
    return render(
        request,
        "dashboard.html",
        {
            "videos": rows,
            "offers": offers,
            "stats": await film_stats(engine, user.id, ids),
            "statements": await creator_statements(engine, user.id),
            "channel_price": await channel_plan(engine, user.id),
            "currency": services.settings.pass_currency,
        },
    )


async def save_position(request: Request) -> Response:
    """`PUT {"position": seconds}`: where this viewer stopped, to resume from next time."""
    user = require_user(request)
    video_id = request.path_params["video_id"]
    body = exact_shape(
        await read_json(request, POSITION_BODY_LIMIT),
        {"position": (int, float)},
        '{"position": seconds}',
    )
    position = float(body["position"])
    if not math.isfinite(position) or position < 0:
        raise ValidationFailed("The position must be a number of seconds, 0 or more.")
    engine = services_of(request).engine
    video = await visible_video(engine, viewer_of(request), video_id)
    if video.duration:
        position = min(position, float(video.duration))
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    now = utcnow()
    statement = insert(watch_progress).values(
        user_id=user.id, video_id=video_id, position=position, updated_at=now
    )
    statement = statement.on_conflict_do_update(
        index_elements=[watch_progress.c.user_id, watch_progress.c.video_id],
        set_={"position": position, "updated_at": now},
    )
    async with engine.begin() as conn:
        await conn.execute(statement)
    return Response(status_code=204)


routes = [
    Route("/watch/{video_id}", watch, methods=["GET"], name="watch"),
    Route("/upload", upload, methods=["GET"], name="upload_page"),
    Route("/dashboard", dashboard, methods=["GET"], name="dashboard"),
    Route("/api/videos/{video_id}/position", save_position, methods=["PUT"], name="position"),
]
