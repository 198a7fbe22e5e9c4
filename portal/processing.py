"""Turning an uploaded source into an encrypted HLS ladder: what a transcode job does.

The source exists only as encrypted vault parts; it is decrypted into a private temp dir
(0700) under `settings.scratch_dir`, probed defensively, and handed to the transcoder. Every
segment is encrypted into the vault the moment ffmpeg finishes it and its plaintext deleted,
and a `segments` row is written, so the film is playable after its first segments. The
poster and storyboard are made once it is playable, beside the rest of the encode: a viewer
waits for the first segments of every rung, never for pictures. The temp
dir goes on every exit path. If this process is killed (`kill -9`, OOM), a `Guard` janitor
kills the job's ffmpeg and removes the temp dir at once; dirs that survive even that (the
janitor killed too) are removed at start-up.

Errors: `MediaRejected` (the file is bad; retrying will not help) and `TranscodeFailed` (may
pass) come from the transcoder; the worker decides what to do with them.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from portal.db import renditions as renditions_table
from portal.db import segments as segments_table
from portal.db import utcnow, videos
from portal.layout import (
    HLS_PREFIX,
    POSTER,
    SOURCE_PREFIX,
    STORYBOARD_IMAGE,
    STORYBOARD_VTT,
    segment_path,
)
from portal.settings import Settings
from portal.vault import Vault
from transcoder import images
from transcoder.guard import Guard
from transcoder.hls import HlsOptions, Progress, Segment, transcode
from transcoder.ladder import Rendition, build_ladder
from transcoder.limits import MediaLimits
from transcoder.probe import MediaInfo, probe
from transcoder.process import first_error

log = logging.getLogger("megamovie.processing")

#: Progress is written when it moved this much, or this long after the last write.
PROGRESS_STEP = 0.02
PROGRESS_INTERVAL = 1.0
_SCRATCH_NAME = re.compile(r"^job-(\d+)-")


def clean_scratch(settings: Settings) -> int:
    """Remove temp dirs left by processes that no longer run (killed mid-job). Returns how
    many were removed. Dirs of live processes stay: several workers may share a data dir."""
    root = settings.scratch_dir
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    removed = 0
    for entry in root.iterdir():
        match = _SCRATCH_NAME.match(entry.name)
        if match and _alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


class Processor:
    """Runs one video through probe, ladder, images and transcode, storing as it goes."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        vault: Vault,
        *,
        on_transcoded: Callable[[float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.vault = vault
        self.on_transcoded = on_transcoded  # metrics hook: seconds spent transcoding
        self.limits = MediaLimits(
            max_duration=settings.max_duration_seconds,
            max_pixels=settings.max_pixels,
            max_file_bytes=settings.max_upload_bytes,
        )
        self.options = HlsOptions(
            segment_seconds=settings.segment_seconds,
            preset=settings.transcode_preset,
            timeout=settings.transcode_timeout_seconds,
            ffmpeg=settings.ffmpeg,
        )

    async def process(self, video_id: str) -> None:
        root = self.settings.scratch_dir
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # If this process dies, however it dies, the guard's janitor kills the job's ffmpeg
        # and removes the dir: no plaintext outlives us.
        async with Guard.start() as guard:
            # mkdtemp makes the dir 0700: plaintext of someone's film is readable by us alone.
            workdir = Path(tempfile.mkdtemp(prefix=f"job-{os.getpid()}-", dir=root))
            guard.protect_path(workdir)
            try:
                await self._process(video_id, workdir, guard)
            finally:
                # Shielded: a worker cancelled at shutdown still removes the plaintext it made.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(shutil.rmtree, workdir, True)

    async def _process(self, video_id: str, workdir: Path, guard: Guard) -> None:
        await self._reset(video_id)
        source = workdir / "source"
        source_size = await self._decrypt_source(video_id, source)
        info = await probe(source, self.limits, ffprobe=self.settings.ffprobe, guard=guard)
        ladder = build_ladder(info)
        await self._set(
            video_id, duration=info.duration, width=info.width or None,
            height=info.height or None,
        )  # fmt: skip
        await self._save_renditions(video_id, ladder)
        stored = source_size
        playable = anyio.Event()

        async def pictures() -> None:
            nonlocal stored
            await playable.wait()
            stored += await self._store_images(video_id, info, source, workdir, guard)

        # A failure on either side cancels the other; the worker gets it as it was raised.
        try:
            async with anyio.create_task_group() as tg:
                if info.has_video:
                    tg.start_soon(pictures)
                stored += await self._transcode(
                    video_id, info, ladder, source, workdir, guard, on_playable=playable.set
                )
                playable.set()  # a film that never became playable: no one waits forever
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        await self._measure_bandwidth(video_id)
        await self._set(
            video_id, status="ready", progress=1.0, playable=True, stored_bytes=stored,
            ready_at=func.coalesce(videos.c.ready_at, utcnow()), error=None,
        )  # fmt: skip

    async def _reset(self, video_id: str) -> None:
        """Forget what an earlier, interrupted attempt stored: it starts again from scratch."""
        for path in await self.vault.list(video_id, HLS_PREFIX):
            await self.vault.delete(video_id, path)
        async with self.engine.begin() as conn:
            await conn.execute(delete(segments_table).where(segments_table.c.video_id == video_id))
            await conn.execute(
                delete(renditions_table).where(renditions_table.c.video_id == video_id)
            )
            await conn.execute(
                update(videos)
                .where(videos.c.id == video_id)
                .values(status="processing", progress=0.0, playable=False, error=None,
                        updated_at=utcnow())
            )  # fmt: skip

    async def _decrypt_source(self, video_id: str, dest: Path) -> int:
        parts = sorted(p for p in await self.vault.list(video_id, SOURCE_PREFIX))
        written = 0
        with dest.open("wb") as out:
            os.chmod(dest, 0o600)
            for part in parts:
                async for chunk in self.vault.iter_range(video_id, part):
                    await anyio.to_thread.run_sync(out.write, chunk)
                    written += len(chunk)
        return written

    async def _save_renditions(self, video_id: str, ladder: list[Rendition]) -> None:
        async with self.engine.begin() as conn:
            for position, r in enumerate(ladder):
                await conn.execute(
                    renditions_table.insert().values(
                        video_id=video_id, name=r.name, width=r.width, height=r.height,
                        fps=r.fps, bandwidth=r.bandwidth, average_bandwidth=r.average_bandwidth,
                        codecs=r.codecs, position=position,
                    )
                )  # fmt: skip

    async def _measure_bandwidth(self, video_id: str) -> None:
        """Replace each rendition's declared bit rates with what its segments really carry.

        HLS wants BANDWIDTH to be the peak segment bit rate and AVERAGE-BANDWIDTH the mean; the
        ladder's figures are the encoder's targets, which a player would otherwise trust while
        choosing a rendition. Measured once the film is complete, from the stored sizes.
        """
        async with self.engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(
                        segments_table.c.rendition,
                        func.max(segments_table.c.size * 8.0 / segments_table.c.duration),
                        func.sum(segments_table.c.size) * 8.0,
                        func.sum(segments_table.c.duration),
                    )
                    .where(
                        segments_table.c.video_id == video_id,
                        segments_table.c.idx >= 0,
                        segments_table.c.duration > 0,
                    )
                    .group_by(segments_table.c.rendition)
                )
            ).all()
            for name, peak, bits, seconds in rows:
                await conn.execute(
                    update(renditions_table)
                    .where(
                        renditions_table.c.video_id == video_id,
                        renditions_table.c.name == name,
                    )
                    .values(bandwidth=math.ceil(peak), average_bandwidth=math.ceil(bits / seconds))
                )

    async def _store_images(
        self, video_id: str, info: MediaInfo, source: Path, workdir: Path, guard: Guard
    ) -> int:
        folder = workdir / "images"
        folder.mkdir(mode=0o700)
        ffmpeg = self.settings.ffmpeg
        made = await images.pictures(
            source, info, folder, poster_name=POSTER, sprite_uri=STORYBOARD_IMAGE,
            ffmpeg=ffmpeg, guard=guard,
        )  # fmt: skip
        stored = await self.vault.put_file(video_id, POSTER, made.poster)
        stored += await self.vault.put_file(video_id, STORYBOARD_IMAGE, made.storyboard.sprite)
        stored += await self.vault.put(video_id, STORYBOARD_VTT, made.storyboard.vtt.encode())
        await anyio.to_thread.run_sync(shutil.rmtree, folder)
        await self._set(video_id, has_poster=True, has_storyboard=True)
        return stored

    async def _transcode(
        self, video_id: str, info: MediaInfo, ladder: list[Rendition], source: Path,
        workdir: Path, guard: Guard, *, on_playable: Callable[[], None],
    ) -> int:  # fmt: skip
        names = {r.name for r in ladder}
        started: set[str] = set()
        stored = 0
        last = {"fraction": 0.0, "at": time.monotonic()}

        async def on_segment(segment: Segment) -> None:
            nonlocal stored
            size = segment.path.stat().st_size
            await self.vault.put_file(video_id, segment_path(segment.rendition, segment.index),
                                      segment.path)  # fmt: skip
            segment.path.unlink()  # plaintext lives no longer than it must
            stored += size
            async with self.engine.begin() as conn:
                await conn.execute(
                    segments_table.insert().values(
                        video_id=video_id, rendition=segment.rendition, idx=segment.index,
                        duration=segment.duration, size=size,
                    )
                )  # fmt: skip
                if segment.kind == "init":
                    # CODECS as encoded (read from the init segment), stored before the first
                    # media segment can make the film playable.
                    await conn.execute(
                        update(renditions_table)
                        .where(renditions_table.c.video_id == video_id,
                               renditions_table.c.name == segment.rendition)
                        .values(codecs=segment.codecs)
                    )  # fmt: skip
            if segment.kind == "media" and segment.rendition not in started:
                started.add(segment.rendition)
                if started == names:
                    # Public from now on (portal.videos): `ready_at` is when it was published.
                    await self._set(video_id, playable=True, ready_at=utcnow())
                    on_playable()

        async def on_progress(progress: Progress) -> None:
            now = time.monotonic()
            if (
                progress.fraction - last["fraction"] >= PROGRESS_STEP
                or now - last["at"] >= PROGRESS_INTERVAL
            ):
                last.update(fraction=progress.fraction, at=now)
                # Never report 100% before the last segments are stored.
                await self._set(video_id, progress=min(progress.fraction, 0.99))

        began = time.monotonic()
        await transcode(source, info, ladder, workdir / "hls", self.options, on_segment,
                        on_progress, guard=guard)  # fmt: skip
        if self.on_transcoded is not None:
            self.on_transcoded(time.monotonic() - began)
        return stored

    async def _set(self, video_id: str, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(videos).where(videos.c.id == video_id).values(updated_at=utcnow(), **values)
            )
