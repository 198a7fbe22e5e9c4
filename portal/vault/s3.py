"""S3-compatible object storage (AWS, SeaweedFS, MinIO, ...) through aiobotocore.

The URL is `s3://bucket/prefix`; endpoint, region and credentials come from the
`StorageConfig` s3_* fields. Small objects are one PUT; large ones a multipart upload whose
parts are sent as they fill, so memory stays bounded. Both become visible only when complete
(S3 writes are atomic per object), and an aborted multipart upload is cleaned up.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import urlsplit

import anyio
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from portal.vault.backend import put_stream
from portal.vault.config import StorageConfig
from portal.vault.errors import ObjectNotFound, StorageError
from portal.vault.names import validate_name, validate_prefix

# Parts must be at least 5 MiB except the last; 8 MiB keeps memory small and requests few.
PART_SIZE = 8 * 1024 * 1024
_MISSING = {"404", "NoSuchKey", "NotFound"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Storage:
    def __init__(self, client: Any, stack: AsyncExitStack, bucket: str, prefix: str) -> None:
        self._client = client
        self._stack = stack
        self.bucket = bucket
        self.prefix = prefix  # "" or "some/prefix/"

    @classmethod
    async def open(cls, config: StorageConfig) -> S3Storage:
        parts = urlsplit(config.url)
        bucket = parts.netloc
        if not bucket:
            raise StorageError(
                f"MEGAMOVIE_STORAGE_URL {config.url!r} names no bucket: use s3://bucket/prefix"
            )
        prefix = parts.path.strip("/")
        prefix = f"{prefix}/" if prefix else ""
        client_config = AioConfig(
            # Path-style addressing and checksums only when required work with every
            # S3-compatible server, not just AWS.
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # Bounded: an unreachable store fails a request in seconds (503), never hangs it.
            connect_timeout=config.s3_timeout_seconds,
            read_timeout=config.s3_timeout_seconds,
            retries={"max_attempts": 2, "mode": "standard"},
            max_pool_connections=32,
        )
        stack = AsyncExitStack()
        client = await stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=config.s3_endpoint_url,
                region_name=config.s3_region,
                aws_access_key_id=config.s3_access_key_id,
                aws_secret_access_key=config.s3_secret_access_key,
                config=client_config,
            )
        )
        storage = cls(client, stack, bucket, prefix)
        try:
            await client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            await stack.aclose()
            if _code(exc) in _MISSING or _code(exc) == "NoSuchBucket":
                raise StorageError(f"the S3 bucket {bucket!r} does not exist; create it") from None
            raise StorageError(f"cannot use the S3 bucket {bucket!r}: {_code(exc)}") from None
        except BotoCoreError as exc:
            await stack.aclose()
            raise StorageError(f"cannot reach S3 at {config.s3_endpoint_url}: {exc}") from None
        return storage

    def key_of(self, name: str) -> str:
        return self.prefix + validate_name(name)

    async def put(self, name: str, stream: AsyncIterable[bytes | bytearray | memoryview]) -> int:
        return await put_stream(self, name, stream)

    def upload(self, name: str) -> S3Upload:
        return S3Upload(self, name, self.key_of(name))

    async def read(self, name: str, start: int = 0, end: int | None = None) -> bytes:
        key = self.key_of(name)
        if end is not None and end <= start:
            return b""
        byte_range = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
        try:
            if start == 0 and end is None:
                response = await self._client.get_object(Bucket=self.bucket, Key=key)
            else:
                response = await self._client.get_object(
                    Bucket=self.bucket, Key=key, Range=byte_range
                )
            async with response["Body"] as body:
                return await body.read()
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise ObjectNotFound(f"no object {name}") from None
            if _code(exc) == "InvalidRange":
                return b""
            raise StorageError(f"cannot read {name} from S3: {_code(exc)}") from None
        except BotoCoreError as exc:
            raise StorageError(f"cannot read {name} from S3: {exc}") from None

    async def size(self, name: str) -> int:
        try:
            head = await self._client.head_object(Bucket=self.bucket, Key=self.key_of(name))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise ObjectNotFound(f"no object {name}") from None
            raise StorageError(f"cannot stat {name} on S3: {_code(exc)}") from None
        except BotoCoreError as exc:
            raise StorageError(f"cannot stat {name} on S3: {exc}") from None
        return int(head["ContentLength"])

    async def delete(self, name: str) -> None:
        try:
            await self._client.delete_object(Bucket=self.bucket, Key=self.key_of(name))
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot delete {name} on S3: {exc}") from None

    async def delete_prefix(self, prefix: str) -> int:
        names = await self.list(prefix)
        for start in range(0, len(names), 1000):
            batch = names[start : start + 1000]
            try:
                result = await self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self.prefix + n} for n in batch], "Quiet": True},
                )
            except (ClientError, BotoCoreError) as exc:
                raise StorageError(f"cannot delete under {prefix} on S3: {exc}") from None
            if result.get("Errors"):
                first = result["Errors"][0]
                raise StorageError(
                    f"S3 refused to delete {len(result['Errors'])} objects under {prefix}, "
                    f"e.g. {first.get('Key')}: {first.get('Code')}"
                )
        return len(names)

    async def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        names: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    names.append(item["Key"][len(self.prefix) :])
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot list {prefix} on S3: {exc}") from None
        return sorted(names)

    async def ping(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot reach the S3 bucket {self.bucket!r}: {exc}") from None

    async def aclose(self) -> None:
        await self._stack.aclose()


class S3Upload:
    def __init__(self, storage: S3Storage, name: str, key: str) -> None:
        self._s3 = storage
        self._client = storage._client
        self._name = name
        self._key = key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._size = 0

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data
        self._size += len(data)
        while len(self._buffer) >= PART_SIZE:
            part = bytes(self._buffer[:PART_SIZE])
            del self._buffer[:PART_SIZE]
            await self._send_part(part)

    async def _send_part(self, part: bytes) -> None:
        bucket = self._s3.bucket
        try:
            if self._upload_id is None:
                created = await self._client.create_multipart_upload(Bucket=bucket, Key=self._key)
                self._upload_id = created["UploadId"]
            number = len(self._parts) + 1
            sent = await self._client.upload_part(
                Bucket=bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=part
            )
        except (ClientError, BotoCoreError) as exc:
            await self.abort()
            raise StorageError(f"cannot upload {self._name} to S3: {exc}") from None
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})

    async def commit(self) -> int:
        bucket = self._s3.bucket
        try:
            if self._upload_id is None:
                body = bytes(self._buffer)
                await self._client.put_object(Bucket=bucket, Key=self._key, Body=body)
            else:
                if self._buffer:
                    await self._send_part(bytes(self._buffer))
                await self._client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
        except (ClientError, BotoCoreError) as exc:
            await self.abort()
            raise StorageError(f"cannot store {self._name} on S3: {exc}") from None
        self._buffer.clear()
        return self._size

    async def abort(self) -> None:
        self._buffer.clear()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            with anyio.CancelScope(shield=True), contextlib.suppress(ClientError, BotoCoreError):
                await self._client.abort_multipart_upload(
                    Bucket=self._s3.bucket, Key=self._key, UploadId=upload_id
                )
