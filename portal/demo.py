"""`serve --demo`: an empty catalog gets a few short generated films, so there is something
to browse and watch on first run. They are made by ffmpeg from its built-in test sources and
go through the normal pipeline (upload, vault, queue, transcode) like any creator's film.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import anyio
from sqlalchemy import func, select

from portal.accounts import create_user, get_user_by_email
from portal.db import videos
from portal.services import Services

log = logging.getLogger("megamovie.demo")

DEMO_EMAIL = "demo-creator@megamovie.invalid"
DEMO_NAME = "Demo Studio"


@dataclass(frozen=True)
class DemoFilm:
    title: str
    description: str
    tags: str
    video: str  # an ffmpeg lavfi source
    audio: str


FILMS = (
    DemoFilm("Test Pattern Symphony", "Colour bars and a gentle 440 Hz hum.", "classic bars",
             "smptehdbars=size=1280x720:rate=25", "sine=frequency=440"),
    DemoFilm("Into the Mandelbrot", "A slow dive into the famous fractal.", "fractal maths",
             "mandelbrot=size=1280x720:rate=25", "sine=frequency=220"),
    DemoFilm("Game of Life", "Cells live, cells die: Conway's automaton.", "cells maths",
             "life=size=1280x720:rate=25:mold=10:ratio=0.1:death_color=#202040",
             "anoisesrc=color=brown:amplitude=0.1"),
    DemoFilm("Moving Pictures", "ffmpeg's test card, counting time.", "test card",
             "testsrc2=size=1280x720:rate=25", "sine=frequency=660"),
)  # fmt: skip


def make_film(film: DemoFilm, out: Path, *, seconds: float, ffmpeg: str = "ffmpeg") -> Path:
    """Render one demo film to an MP4 (our own lavfi sources, no user input involved)."""
    subprocess.run(
        [ffmpeg, "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", film.video,
         "-f", "lavfi", "-i", film.audio, "-t", str(seconds), "-c:v", "libx264",
         "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(out)],
        check=True, timeout=300,
    )  # fmt: skip
    return out


async def seed_demo(
    services: Services, *, seconds: float = 12.0, count: int = len(FILMS)
) -> list[str]:
    """Queue the demo films when the catalog has no videos at all; returns their ids."""
    async with services.engine.connect() as conn:
        existing = await conn.scalar(select(func.count()).select_from(videos))
    if existing:
        return []
    creator = await get_user_by_email(services.engine, DEMO_EMAIL)
    if creator is None:
        # Nobody logs in as the demo creator: its password is random and never shown.
        creator = await create_user(
            services.engine, services.settings, email=DEMO_EMAIL,
            password=secrets.token_urlsafe(24), role="creator", display_name=DEMO_NAME,
        )  # fmt: skip
    ids = []
    # Named like a job's temp dir, so a start-up clean-up elsewhere leaves it alone.
    prefix = f"job-{os.getpid()}-demo-"
    with tempfile.TemporaryDirectory(prefix=prefix, dir=_scratch(services)) as tmp:
        for i, film in enumerate(FILMS[:count]):
            path = Path(tmp) / f"demo-{i}.mp4"
            await anyio.to_thread.run_sync(
                functools.partial(
                    make_film, film, path, seconds=seconds, ffmpeg=services.settings.ffmpeg
                )
            )
            ids.append(
                await services.uploads.import_file(
                    creator.id, path,
                    {"title": film.title, "description": film.description, "tags": film.tags},
                )
            )  # fmt: skip
            path.unlink()
    log.info("queued %d demo films", len(ids))
    return ids


def _scratch(services: Services) -> Path:
    root = services.settings.scratch_dir
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root
