"""Resumable uploads (the domain side of tus 1.0): creation, appending, concatenation,
termination, expiry.

Bytes are never stored in the clear: each PATCH body is streamed into a fresh, sealed vault
object `source/part-NNNNNN` under the upload's own data key, so a resumed upload is simply more
parts. The quota is checked from the declared length before any byte is accepted (the
declared length is reserved until the upload finishes or expires), and bytes beyond the
declared length are refused as they arrive.

Two PATCHes on one upload must never both write: a PATCH holds the upload's write lease
(`portal.leases`), which belongs to the live process serving it, so a killed process leaves
nothing behind to wait for. The offset still moves by compare-and-set.

Concatenation (tus `concatenation`, what tus-js-client's `parallelUploads` uses): *partial*
uploads are not films; their bytes wait under a data key of their own (the vault owner is the
upload's id). A *final* upload names its partials in order; their parts are re-encrypted into
one new film's source, in that order, and the partials are crypto-shredded. Partials count
towards the quota and the open-uploads cap until then, and expire like unfinished uploads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from portal.db import is_id, new_id, utcnow, videos
from portal.db import uploads as uploads_table
from portal.errors import (
    ChecksumMismatch,
    Conflict,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    TooManyUploads,
    UploadGone,
    UploadRejected,
    UploadTooLarge,
    ValidationFailed,
)
from portal.jobs import JobQueue
from portal.layout import SOURCE_PREFIX, source_part_path
from portal.leases import Leases, lease
from portal.settings import Settings
from portal.vault import Vault
from portal.videos import delete_video

log = logging.getLogger("megamovie.uploads")

CHECKSUM_ALGORITHMS = ("sha1", "md5")
PARTIAL = "partial"
FINAL = "final"
MAX_TITLE = 200
MAX_DESCRIPTION = 5000
MAX_TAGS = 500
#: A final upload may gather this many partials (tus-js-client uses one per parallel upload).
MAX_PARTIALS = 64
_BUSY = (
    "Another request is writing to this upload right now; wait for it, then ask with HEAD "
    "where to resume."
)


@dataclass(frozen=True)
class Upload:
    id: str
    video_id: str | None  # None for a partial upload: it is not a film
    creator_id: str
    length: int
    offset: int
    parts: int
    metadata: dict[str, str]
    created_at: datetime
    expires_at: datetime
    completed_at: datetime | None
    concat: str | None = None  # None, "partial", or "final;<id> <id> ..."

    @property
    def complete(self) -> bool:
        return self.completed_at is not None

    @property
    def is_partial(self) -> bool:
        return self.concat == PARTIAL

    @property
    def is_final(self) -> bool:
        return (self.concat or "").startswith(FINAL + ";")

    @property
    def partial_ids(self) -> list[str]:
        """The partial uploads a final upload was made of, in order."""
        return self.concat.partition(";")[2].split() if self.is_final and self.concat else []

    @property
    def vault_owner(self) -> str:
        """Whose data key seals the parts: the film's, or a partial upload's own."""
        return self.video_id or self.id

    @property
    def open(self) -> bool:
        """Does it hold a place (quota, the open-uploads cap, expiry)? Unfinished uploads do,
        and so do finished partials, until a final upload gathers them."""
        return not self.complete or self.is_partial

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
            concat=row.concat,
        )


def _clean_tags(raw: str) -> str:
    words = {w.strip("#,;").lower() for w in raw.replace(",", " ").split()}
    return " ".join(sorted(w for w in words if w))[:MAX_TAGS]


# `Upload.open` in SQL.
_OPEN = or_(uploads_table.c.completed_at.is_(None), uploads_table.c.concat == PARTIAL)


class Uploads:
    """Upload resources of creators, stored in the vault and tracked in `uploads`."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        vault: Vault,
        queue: JobQueue,
        leases: Leases,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.vault = vault
        self.queue = queue
        self.leases = leases

    async def quota_used(self, creator_id: str) -> int:
        """Bytes stored for the creator's videos plus the declared length of open uploads
        (reserved: they may finish; finished partials are stored bytes without a film)."""
        async with self.engine.connect() as conn:
            stored = await conn.scalar(
                select(func.coalesce(func.sum(videos.c.stored_bytes), 0)).where(
                    videos.c.creator_id == creator_id
                )
            )
            pending = await conn.scalar(
                select(func.coalesce(func.sum(uploads_table.c.length), 0)).where(
                    uploads_table.c.creator_id == creator_id, _OPEN
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
        """Each open upload holds a row, its metadata and a reservation for a day: a creator
        may keep only `max_open_uploads` of them at once."""
        async with self.engine.connect() as conn:
            open_uploads = await conn.scalar(
                select(func.count())
                .select_from(uploads_table)
                .where(uploads_table.c.creator_id == creator_id, _OPEN)
            )
        limit = self.settings.max_open_uploads
        if int(open_uploads or 0) >= limit:
            hours = max(1, self.settings.upload_expiry_seconds // 3600)
            raise TooManyUploads(
                f"You already have {limit} unfinished uploads; finish or cancel one of them "
                f"before starting another (an upload left alone expires {hours} h after its "
                "last chunk)."
            )

    def _check_length(self, length: int) -> None:
        if length < 0:
            raise ValidationFailed("Upload-Length must be a non-negative integer.")
        if length > self.settings.max_upload_bytes:
            raise UploadTooLarge(
                f"The file is {length:,} bytes; the largest upload accepted is "
                f"{self.settings.max_upload_bytes:,} bytes."
            )

    async def create(
        self, creator_id: str, length: int, metadata: dict[str, str], *, partial: bool = False
    ) -> Upload:
        """A new upload: with its video (status `uploading`, with its own data key), or, for
        a partial upload, with a data key of its own and no video."""
        self._check_length(length)
        await self._check_open_uploads(creator_id)
        await self._check_quota(creator_id, length)
        upload = await self._insert(creator_id, length, metadata, PARTIAL if partial else None)
        if length == 0:
            upload = await self._finish(upload)
        return upload

    async def _insert(
        self, creator_id: str, length: int, metadata: dict[str, str], concat: str | None
    ) -> Upload:
        now = utcnow()
        upload_id = new_id()
        video_id = None if concat == PARTIAL else new_id()
        async with self.engine.begin() as conn:
            if video_id is not None:
                await self._insert_video(conn, video_id, creator_id, length, metadata, now)
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
                    expires_at=now + timedelta(seconds=self.settings.upload_expiry_seconds),
                    concat=concat,
                )
            )
        owner = video_id or upload_id
        try:
            await self.vault.create_key(owner)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._discard_rows(upload_id, video_id)
            raise
        return await self.get(creator_id, upload_id)

    @staticmethod
    async def _insert_video(
        conn: AsyncConnection,
        video_id: str,
        creator_id: str,
        length: int,
        metadata: dict[str, str],
        now: datetime,
    ) -> None:
        filename = metadata.get("filename", "")[:255]
        title = (metadata.get("title") or filename.rsplit(".", 1)[0] or "Untitled").strip()
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
        if upload.open and upload.expires_at <= utcnow():
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
        upload = await self._appendable(creator_id, upload_id, offset)
        async with lease(self.leases, upload.id, _BUSY):
            # Read again under the lease: the writer before us may have just moved it on.
            upload = await self._appendable(creator_id, upload_id, offset)
            received = await self._store_part(upload, body, checksum)
            if received:
                upload = await self._advance(upload, received)
        if upload.offset == upload.length:
            upload = await self._finish(upload)
        return upload

    async def _appendable(self, creator_id: str, upload_id: str, offset: int) -> Upload:
        upload = await self.get(creator_id, upload_id)
        if upload.is_final:
            # tus: a final upload is made by concatenation, never written to.
            raise PermissionDenied(
                "A final upload is made of its partial uploads; it takes no PATCH."
            )
        if upload.complete:
            raise Conflict("This upload is already complete.")
        if offset != upload.offset:
            raise Conflict(
                f"Upload-Offset {offset} does not match the {upload.offset} bytes received; "
                "ask with HEAD and resume from there."
            )
        return upload

    async def _store_part(
        self, upload: Upload, body: AsyncIterator[bytes], checksum: tuple[str, bytes] | None
    ) -> int:
        """Stream the body into a new sealed part; returns how many bytes it holds (0: none
        arrived, nothing stored)."""
        room = upload.length - upload.offset
        digest = hashlib.new(checksum[0], usedforsecurity=False) if checksum else None
        path = source_part_path(upload.parts + 1)
        # The writer stores nothing if we leave it with an exception: a refused chunk
        # (too long, bad checksum) leaves no trace and the offset does not move.
        async with self.vault.writer(upload.vault_owner, path) as writer:
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
            if checksum is not None and digest is not None and digest.digest() != checksum[1]:
                raise ChecksumMismatch(
                    "The bytes received do not match Upload-Checksum; send this chunk again."
                )
            received = writer.written
        if received == 0:
            # The client went away before sending anything: an empty part is not worth keeping.
            await self.vault.delete(upload.vault_owner, path)
        return int(received)

    async def _advance(self, upload: Upload, received: int) -> Upload:
        now = utcnow()
        expires = now + timedelta(seconds=self.settings.upload_expiry_seconds)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(uploads_table)
                .where(
                    uploads_table.c.id == upload.id,
                    uploads_table.c.offset == upload.offset,
                    uploads_table.c.parts == upload.parts,
                )
                .values(offset=upload.offset + received, parts=upload.parts + 1, expires_at=expires)
            )
        if result.rowcount != 1:
            # Only if the lease was lost under us (a database connection dropped mid-PATCH):
            # another writer moved the offset first, and this body does not count.
            raise Conflict(_BUSY)
        return dataclasses.replace(
            upload, offset=upload.offset + received, parts=upload.parts + 1, expires_at=expires
        )

    async def _finish(self, upload: Upload) -> Upload:
        """The last byte is in: the video is queued for transcoding. A partial upload only
        waits for its final upload."""
        now = utcnow()
        async with self.engine.begin() as conn:
            await conn.execute(
                update(uploads_table)
                .where(uploads_table.c.id == upload.id)
                .values(completed_at=now)
            )
            if upload.video_id is not None:
                await self._queue(conn, upload.video_id, upload.length, now)
        if upload.video_id is not None:
            self.queue.notify()  # committed: this process's idle workers take it now
        return dataclasses.replace(upload, completed_at=now)

    async def _queue(
        self, conn: AsyncConnection, video_id: str, length: int, now: datetime
    ) -> None:
        await conn.execute(
            update(videos)
            .where(videos.c.id == video_id)
            .values(status="queued", source_size=length, stored_bytes=length, updated_at=now)
        )
        await self.queue.enqueue(video_id, conn=conn)

    async def concatenate(
        self, creator_id: str, partial_ids: Sequence[str], metadata: dict[str, str]
    ) -> Upload:
        """A final upload made of finished partial uploads, in order: one film whose source is
        their bytes, re-encrypted under the film's own key. The partials are then
        crypto-shredded. A crash midway leaves an unfinished final upload (swept when it
        expires) and the partials as they were, so the client may simply ask again."""
        if not partial_ids or len(partial_ids) > MAX_PARTIALS:
            raise ValidationFailed(
                f"A final upload is made of 1 to {MAX_PARTIALS} partial uploads."
            )
        if len(set(partial_ids)) != len(partial_ids):
            raise ValidationFailed("A final upload names each partial upload once.")
        partials = [await self._finished_partial(creator_id, pid) for pid in partial_ids]
        length = sum(p.length for p in partials)
        self._check_length(length)
        async with contextlib.AsyncExitStack() as held:
            for partial in partials:
                await held.enter_async_context(lease(self.leases, partial.id, _BUSY))
            # Under the leases: still there, still finished (another final may have used them).
            partials = [await self._finished_partial(creator_id, p.id) for p in partials]
            concat = f"{FINAL};" + " ".join(p.id for p in partials)
            final = await self._insert(creator_id, length, metadata, concat)
            assert final.video_id is not None
            parts = await self._copy_parts(partials, final.video_id)
            now = utcnow()
            async with self.engine.begin() as conn:
                gone = await conn.execute(
                    delete(uploads_table).where(
                        uploads_table.c.id.in_([p.id for p in partials]),
                        uploads_table.c.concat == PARTIAL,
                    )
                )
                if gone.rowcount != len(partials):
                    raise Conflict("These partial uploads were used by another final upload.")
                await conn.execute(
                    update(uploads_table)
                    .where(uploads_table.c.id == final.id)
                    .values(offset=length, parts=parts, completed_at=now)
                )
                await self._queue(conn, final.video_id, length, now)
            self.queue.notify()
        for partial in partials:
            await self.vault.destroy(partial.id)
        return dataclasses.replace(final, offset=length, parts=parts, completed_at=now)

    async def _finished_partial(self, creator_id: str, upload_id: str) -> Upload:
        upload = await self.get(creator_id, upload_id)
        if not upload.is_partial:
            raise ValidationFailed(
                f"Upload {upload_id} is not a partial upload (create those with "
                "'Upload-Concat: partial')."
            )
        if not upload.complete:
            raise ValidationFailed(
                f"Partial upload {upload_id} has {upload.offset:,} of its {upload.length:,} "
                "bytes; finish it before concatenating."
            )
        return upload

    async def _copy_parts(self, partials: Sequence[Upload], video_id: str) -> int:
        """Re-encrypt every part of `partials`, in order, as the video's source parts."""
        number = 0
        for partial in partials:
            for path in sorted(await self.vault.list(partial.id, SOURCE_PREFIX)):
                number += 1
                async with self.vault.writer(video_id, source_part_path(number)) as writer:
                    async for piece in self.vault.iter_range(partial.id, path):
                        await writer.write(piece)
        return number

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
        if not upload.complete or upload.video_id is None:
            raise UploadRejected(f"{path} changed while it was being imported; try again.")
        return upload.video_id

    async def terminate(self, creator_id: str, upload_id: str) -> None:
        """tus termination. An open upload is deleted with its video or partial bytes
        (crypto-shredded); a finished one only forgets the upload resource: the film lives
        on. Not while a PATCH is writing to it (409: ask again in a moment)."""
        upload = await self.get(creator_id, upload_id)
        async with lease(self.leases, upload.id, _BUSY):
            if upload.open:
                await self._discard(upload)
            else:
                async with self.engine.begin() as conn:
                    await conn.execute(delete(uploads_table).where(uploads_table.c.id == upload.id))

    async def sweep_expired(self) -> int:
        """Delete open uploads past their expiry (and their videos or partial bytes), unless
        a PATCH is writing to one right now. Returns the count."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(uploads_table).where(and_(_OPEN, uploads_table.c.expires_at < utcnow()))
                )
            ).all()
        swept = 0
        for row in rows:
            upload = Upload.from_row(row)
            if not await self.leases.try_acquire(upload.id):
                continue  # being written: its expiry moves on when the PATCH ends
            try:
                await self._discard(upload)
                swept += 1
            finally:
                await self.leases.release(upload.id)
        if swept:
            log.info("removed %d expired uploads", swept)
        return swept

    async def _discard(self, upload: Upload) -> None:
        if upload.video_id is not None:
            await delete_video(self.engine, self.vault, upload.video_id)  # the row cascades
        else:
            await self.vault.destroy(upload.id)
            await self._discard_rows(upload.id, None)

    async def _discard_rows(self, upload_id: str, video_id: str | None) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(uploads_table).where(uploads_table.c.id == upload_id))
            if video_id is not None:
                await conn.execute(delete(videos).where(videos.c.id == video_id))
