"""Resumable uploads (the domain side of tus 1.0): creation, appending, termination, expiry.

Bytes are never stored in the clear: each PATCH body is streamed into a fresh, sealed vault
object `source/part-NNNNNN` under the video's own data key, so a resumed upload is simply more
parts. The quota is checked from the declared length before any byte is accepted (the
declared length is reserved until the upload finishes or expires), and bytes beyond the
declared length are refused as they arrive.

Two PATCHes on one upload must never both succeed: a PATCH takes the row's `locked_until`
lease with a compare-and-set on the offset, so the second one sees a conflict.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from portal.db import is_id, new_id, utcnow, videos
from portal.db import uploads as uploads_table
from portal.errors import (
    ChecksumMismatch,
    Conflict,
    NotFound,
    QuotaExceeded,
    TooManyUploads,
    UploadGone,
    UploadRejected,
    UploadTooLarge,
    ValidationFailed,
)
from portal.jobs import JobQueue
from portal.layout import source_part_path
from portal.settings import Settings
from portal.vault import Vault
from portal.videos import delete_video

log = logging.getLogger("megamovie.uploads")

CHECKSUM_ALGORITHMS = ("sha1", "md5")
#: How long a PATCH holds its upload; renewed while bytes keep arriving.
WRITE_LEASE = timedelta(seconds=60)
_RENEW_EVERY = timedelta(seconds=15)
MAX_TITLE = 200
MAX_DESCRIPTION = 5000
MAX_TAGS = 500


@dataclass(frozen=True)
class Upload:
    id: str
    video_id: str
    creator_id: str
    length: int
    offset: int
    parts: int
    metadata: dict[str, str]
    created_at: datetime
    expires_at: datetime
    completed_at: datetime | None

    @property
    def complete(self) -> bool:
        return self.completed_at is not None

    @classmethod
    def from_row(cls, row: Any) -> Upload:
        return cls(
            id=row.id,
            video_id=row.video_id,
            creator_id=row.creator_id,
            length=row.length,
            offset=row.offset,
            parts=row.parts,
            metadata=json.loads(row.metadata),
            created_at=row.created_at,
            expires_at=row.expires_at,
            completed_at=row.completed_at,
        )


def _clean_tags(raw: str) -> str:
    words = {w.strip("#,;").lower() for w in raw.replace(",", " ").split()}
    return " ".join(sorted(w for w in words if w))[:MAX_TAGS]


class Uploads:
    """Upload resources of creators, stored in the vault and tracked in `uploads`."""

    def __init__(
        self, settings: Settings, engine: AsyncEngine, vault: Vault, queue: JobQueue
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.vault = vault
        self.queue = queue

    async def quota_used(self, creator_id: str) -> int:
        """Bytes stored for the creator's videos plus the declared length of unfinished
        uploads (reserved: they may finish)."""
        async with self.engine.connect() as conn:
            stored = await conn.scalar(
                select(func.coalesce(func.sum(videos.c.stored_bytes), 0)).where(
                    videos.c.creator_id == creator_id
                )
            )
            pending = await conn.scalar(
                select(func.coalesce(func.sum(uploads_table.c.length), 0)).where(
                    uploads_table.c.creator_id == creator_id,
                    uploads_table.c.completed_at.is_(None),
                )
            )
        return int(stored or 0) + int(pending or 0)

    async def _check_quota(self, creator_id: str, extra: int) -> None:
        used = await self.quota_used(creator_id)
        if used + extra > self.settings.quota_bytes:
            free = max(0, self.settings.quota_bytes - used)
            raise QuotaExceeded(
                f"This upload needs {extra:,} bytes but only {free:,} of your "
                f"{self.settings.quota_bytes:,}-byte quota are free; delete some videos first."
            )

    async def _check_open_uploads(self, creator_id: str) -> None:
        """Each unfinished upload holds a row, its metadata and a reservation for a day: a
        creator may keep only `max_open_uploads` of them at once."""
        async with self.engine.connect() as conn:
            open_uploads = await conn.scalar(
                select(func.count())
                .select_from(uploads_table)
                .where(
                    uploads_table.c.creator_id == creator_id,
                    uploads_table.c.completed_at.is_(None),
                )
            )
        limit = self.settings.max_open_uploads
        if int(open_uploads or 0) >= limit:
            raise TooManyUploads(
                f"You already have {limit} unfinished uploads; finish or cancel one of them "
                "(they are listed on the upload page) before starting another."
            )

    async def create(self, creator_id: str, length: int, metadata: dict[str, str]) -> Upload:
        """A new upload and its video (status `uploading`, with its own data key)."""
        if length < 0:
            raise ValidationFailed("Upload-Length must be a non-negative integer.")
        if length > self.settings.max_upload_bytes:
            raise UploadTooLarge(
                f"The file is {length:,} bytes; the largest upload accepted is "
                f"{self.settings.max_upload_bytes:,} bytes."
            )
        await self._check_open_uploads(creator_id)
        await self._check_quota(creator_id, length)
        filename = metadata.get("filename", "")[:255]
        title = (metadata.get("title") or filename.rsplit(".", 1)[0] or "Untitled").strip()
        now = utcnow()
        video_id, upload_id = new_id(), new_id()
        expires = now + timedelta(seconds=self.settings.upload_expiry_seconds)
        async with self.engine.begin() as conn:
            await conn.execute(
                videos.insert().values(
                    id=video_id,
                    creator_id=creator_id,
                    title=title[:MAX_TITLE],
                    description=metadata.get("description", "")[:MAX_DESCRIPTION],
                    tags=_clean_tags(metadata.get("tags", "")),
                    status="uploading",
                    progress=0.0,
                    source_filename=filename,
                    source_size=length,
                    created_at=now,
                    updated_at=now,
                )
            )
            await conn.execute(
                uploads_table.insert().values(
                    id=upload_id,
                    video_id=video_id,
                    creator_id=creator_id,
                    length=length,
                    offset=0,
                    parts=0,
                    metadata=json.dumps(metadata),
                    created_at=now,
                    expires_at=expires,
                )
            )
        try:
            await self.vault.create_key(video_id)
        except BaseException:
            async with self.engine.begin() as conn:
                await conn.execute(delete(videos).where(videos.c.id == video_id))
            raise
        upload = await self.get(creator_id, upload_id)
        if length == 0:
            upload = await self._finish(upload)
        return upload

    async def get(self, creator_id: str, upload_id: str) -> Upload:
        """The creator's upload. Someone else's is NotFound, so ids leak nothing."""
        if not is_id(upload_id):
            raise NotFound("There is no such upload; start it again.")
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(uploads_table).where(
                        uploads_table.c.id == upload_id, uploads_table.c.creator_id == creator_id
                    )
                )
            ).first()
        if row is None:
            raise NotFound("There is no such upload; start it again.")
        upload = Upload.from_row(row)
        if not upload.complete and upload.expires_at <= utcnow():
            raise UploadGone("This upload expired before it was finished; start it again.")
        return upload

    async def append(
        self,
        creator_id: str,
        upload_id: str,
        offset: int,
        body: AsyncIterator[bytes],
        checksum: tuple[str, bytes] | None = None,
    ) -> Upload:
        """Store `body` as the next part, starting at `offset`. A body cut short (the client
        went away) is kept: the offset advances by what arrived, and the client resumes."""
        upload = await self.get(creator_id, upload_id)
        if upload.complete:
            raise Conflict("This upload is already complete.")
        if offset != upload.offset:
            raise Conflict(
                f"Upload-Offset {offset} does not match the {upload.offset} bytes received; "
                "ask with HEAD and resume from there."
            )
        await self._lock(upload)
        try:
            received = await self._store_part(upload, body, checksum)
            if received:
                upload = await self._advance(upload, received)
        finally:
            await self._unlock(upload.id)
        if upload.offset == upload.length:
            upload = await self._finish(upload)
        return upload

    async def _lock(self, upload: Upload) -> None:
        now = utcnow()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(uploads_table)
                .where(
                    uploads_table.c.id == upload.id,
                    uploads_table.c.offset == upload.offset,
                    or_(
                        uploads_table.c.locked_until.is_(None),
                        uploads_table.c.locked_until < now,
                    ),
                )
                .values(locked_until=now + WRITE_LEASE)
            )
        if result.rowcount != 1:
            raise Conflict(
                "Another request is writing to this upload right now; wait for it, then "
                "ask with HEAD where to resume."
            )

    async def _renew(self, upload_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(uploads_table)
                .where(uploads_table.c.id == upload_id)
                .values(locked_until=utcnow() + WRITE_LEASE)
            )

    async def _unlock(self, upload_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(uploads_table)
                .where(uploads_table.c.id == upload_id)
                .values(locked_until=None)
            )

    async def _store_part(
        self, upload: Upload, body: AsyncIterator[bytes], checksum: tuple[str, bytes] | None
    ) -> int:
        """Stream the body into a new sealed part; returns how many bytes it holds (0: none
        arrived, nothing stored)."""
        room = upload.length - upload.offset
        digest = hashlib.new(checksum[0], usedforsecurity=False) if checksum else None
        path = source_part_path(upload.parts + 1)
        renew_at = utcnow() + _RENEW_EVERY
        # The writer stores nothing if we leave it with an exception: a refused chunk
        # (too long, bad checksum) leaves no trace and the offset does not move.
        async with self.vault.writer(upload.video_id, path) as writer:
            async for chunk in body:
                if not chunk:
                    continue
                if writer.written + len(chunk) > room:
                    raise UploadTooLarge(
                        f"The body goes past the declared Upload-Length of {upload.length:,} "
                        "bytes; nothing of this request was kept."
                    )
                if digest is not None:
                    digest.update(chunk)
                await writer.write(chunk)
                if utcnow() >= renew_at:
                    await self._renew(upload.id)
                    renew_at = utcnow() + _RENEW_EVERY
            if checksum is not None and digest is not None and digest.digest() != checksum[1]:
                raise ChecksumMismatch(
                    "The bytes received do not match Upload-Checksum; send this chunk again."
                )
            received = writer.written
        if received == 0:
            # The client went away before sending anything: an empty part is not worth keeping.
            await self.vault.delete(upload.video_id, path)
        return int(received)

    async def _advance(self, upload: Upload, received: int) -> Upload:
        now = utcnow()
        expires = now + timedelta(seconds=self.settings.upload_expiry_seconds)
        async with self.engine.begin() as conn:
            await conn.execute(
                update(uploads_table)
                .where(uploads_table.c.id == upload.id)
                .values(offset=upload.offset + received, parts=upload.parts + 1, expires_at=expires)
            )
        return dataclasses.replace(
            upload, offset=upload.offset + received, parts=upload.parts + 1, expires_at=expires
        )

    async def _finish(self, upload: Upload) -> Upload:
        """The last byte is in: the video is queued for transcoding."""
        now = utcnow()
        async with self.engine.begin() as conn:
            await conn.execute(
                update(uploads_table)
                .where(uploads_table.c.id == upload.id)
                .values(completed_at=now)
            )
            await conn.execute(
                update(videos)
                .where(videos.c.id == upload.video_id)
                .values(
                    status="queued",
                    source_size=upload.length,
                    stored_bytes=upload.length,
                    updated_at=now,
                )
            )
            await self.queue.enqueue(upload.video_id, conn=conn)
        return dataclasses.replace(upload, completed_at=now)

    async def import_file(self, creator_id: str, path: Path, metadata: dict[str, str]) -> str:
        """Upload a local file as `creator_id` through the same path as tus (quota, parts,
        queueing); returns the video id. Used by `megamovie import` and the demo catalog."""
        size = (await anyio.Path(path).stat()).st_size
        upload = await self.create(creator_id, size, {"filename": path.name, **metadata})
        if size:

            async def pieces() -> AsyncIterator[bytes]:
                async with await anyio.open_file(path, "rb") as handle:
                    while piece := await handle.read(1024 * 1024):
                        yield piece

            upload = await self.append(creator_id, upload.id, 0, pieces())
        if not upload.complete:
            raise UploadRejected(f"{path} changed while it was being imported; try again.")
        return upload.video_id

    async def terminate(self, creator_id: str, upload_id: str) -> None:
        """tus termination. An unfinished upload is deleted with its video (crypto-shredded);
        a finished one only forgets the upload resource: the video lives on."""
        upload = await self.get(creator_id, upload_id)
        if upload.complete:
            async with self.engine.begin() as conn:
                await conn.execute(delete(uploads_table).where(uploads_table.c.id == upload.id))
            return
        await self._discard(upload.video_id)

    async def sweep_expired(self) -> int:
        """Delete unfinished uploads past their expiry (and their videos). Returns the count."""
        now = utcnow()
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(uploads_table.c.video_id).where(
                        and_(
                            uploads_table.c.completed_at.is_(None),
                            uploads_table.c.expires_at < now,
                            or_(
                                uploads_table.c.locked_until.is_(None),
                                uploads_table.c.locked_until < now,
                            ),
                        )
                    )
                )
            ).all()
        for (video_id,) in rows:
            await self._discard(video_id)
        if rows:
            log.info("removed %d expired uploads", len(rows))
        return len(rows)

    async def _discard(self, video_id: str) -> None:
        await delete_video(self.engine, self.vault, video_id)
