"""The tus 1.0.0 server at /api/uploads: creation, termination, expiration and checksum.

Every response carries `Tus-Resumable`, errors included, because tus clients check it before
anything else. Only creators and admins may upload; someone else's upload answers 404 so ids
reveal nothing. The protocol lives here; what an upload *is* lives in `portal.uploads`.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import format_datetime

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from portal.auth import require_role, require_user
from portal.errors import (
    PortalError,
    UnsupportedContentType,
    UnsupportedProtocol,
    ValidationFailed,
)
from portal.http_errors import portal_error
from portal.parsing import header_int, upload_checksum, upload_metadata
from portal.uploads import CHECKSUM_ALGORITHMS, Upload, Uploads
from portal.web import public_url, services_of

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,termination,expiration,checksum"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"

Endpoint = Callable[[Request], Awaitable[Response]]


def tus_endpoint(endpoint: Endpoint) -> Endpoint:
    """Check the protocol version, and put `Tus-Resumable` on every answer, errors too."""

    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        try:
            if request.method != "OPTIONS":
                version = request.headers.get("tus-resumable")
                if version != TUS_VERSION:
                    raise UnsupportedProtocol(
                        f"This server speaks tus {TUS_VERSION}; send 'Tus-Resumable: "
                        f"{TUS_VERSION}' (got {version!r})."
                    )
            response = await endpoint(request)
        except PortalError as exc:
            response = await portal_error(request, exc)
            if isinstance(exc, UnsupportedProtocol):
                response.headers["Tus-Version"] = TUS_VERSION
        response.headers["Tus-Resumable"] = TUS_VERSION
        return response

    return wrapper


def _service(request: Request) -> Uploads:
    return services_of(request).uploads


def _state_headers(upload: Upload) -> dict[str, str]:
    headers = {
        "Upload-Offset": str(upload.offset),
        "Upload-Length": str(upload.length),
        "Cache-Control": "no-store",
    }
    if upload.complete:
        headers["Video-Id"] = upload.video_id
    else:
        headers["Upload-Expires"] = format_datetime(upload.expires_at, usegmt=True)
    return headers


@tus_endpoint
async def options(request: Request) -> Response:
    settings = services_of(request).settings
    return Response(
        status_code=204,
        headers={
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": TUS_EXTENSIONS,
            "Tus-Max-Size": str(settings.max_upload_bytes),
            "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
        },
    )


@tus_endpoint
async def create(request: Request) -> Response:
    user = require_role(request, "creator", "admin")
    settings = services_of(request).settings
    if "upload-defer-length" in request.headers:
        raise ValidationFailed("Upload-Defer-Length is not supported: send Upload-Length.")
    length = header_int(request.headers, "Upload-Length")
    metadata = upload_metadata(
        request.headers.get("upload-metadata"), max_bytes=settings.max_upload_metadata_bytes
    )
    upload = await _service(request).create(user.id, length, metadata)
    headers = _state_headers(upload)
    headers["Location"] = public_url(
        request, request.app.url_path_for("upload", upload_id=upload.id)
    )
    headers["Video-Id"] = upload.video_id
    return Response(status_code=201, headers=headers)


@tus_endpoint
async def resource(request: Request) -> Response:
    if request.method == "OPTIONS":
        return await options.__wrapped__(request)  # type: ignore[attr-defined]
    user = require_user(request)
    upload_id = request.path_params["upload_id"]
    uploads = _service(request)
    if request.method == "HEAD":
        upload = await uploads.get(user.id, upload_id)
        return Response(status_code=200, headers=_state_headers(upload))
    if request.method == "DELETE":
        await uploads.terminate(user.id, upload_id)
        return Response(status_code=204)
    # PATCH
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != OFFSET_CONTENT_TYPE:
        raise UnsupportedContentType(f"PATCH bodies must be sent as {OFFSET_CONTENT_TYPE}.")
    offset = header_int(request.headers, "Upload-Offset")
    checksum = upload_checksum(request.headers.get("upload-checksum"), CHECKSUM_ALGORITHMS)
    upload = await uploads.append(user.id, upload_id, offset, _body(request), checksum)
    return Response(status_code=204, headers=_state_headers(upload))


async def _body(request: Request) -> AsyncIterator[bytes]:
    """The request body until it ends or the client goes away; what arrived is kept."""
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        return


routes = [
    Route("/api/uploads", options, methods=["OPTIONS"], name="uploads_options"),
    Route("/api/uploads", create, methods=["POST"], name="uploads"),
    Route(
        "/api/uploads/{upload_id}",
        resource,
        methods=["HEAD", "PATCH", "DELETE", "OPTIONS"],
        name="upload",
    ),
]
