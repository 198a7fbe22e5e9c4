"""The tus 1.0.0 server at /api/uploads: creation, creation-with-upload, termination,
expiration, checksum and concatenation.

Every response carries `Tus-Resumable`, errors included, because tus clients check it before
anything else. Only creators and admins may upload; someone else's upload answers 404 so ids
reveal nothing. The protocol lives here; what an upload *is* lives in `portal.uploads`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import format_datetime
from urllib.parse import urlsplit

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from portal.accounts import User
from portal.auth import require_role, require_user
from portal.errors import (
    BadRequest,
    PortalError,
    UnsupportedContentType,
    UnsupportedProtocol,
    ValidationFailed,
)
from portal.http_errors import portal_error
from portal.parsing import (
    encode_upload_metadata,
    header_int,
    optional_header_int,
    upload_checksum,
    upload_metadata,
)
from portal.security import ResponseHeadersMiddleware
from portal.uploads import CHECKSUM_ALGORITHMS, PARTIAL, Upload, Uploads
from portal.web import public_url, services_of

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,creation-with-upload,termination,expiration,checksum,concatenation"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
#: What `X-HTTP-Method-Override` may turn a POST into (tus core: for clients that can only
#: send GET and POST).
OVERRIDABLE = ("PATCH", "DELETE")
_UPLOAD_PATH = re.compile(r"/api/uploads/([A-Za-z0-9]{1,32})")

Endpoint = Callable[[Request], Awaitable[Response]]


class TusResumableMiddleware(ResponseHeadersMiddleware):
    """tus clients check `Tus-Resumable` on every response, refusals and crashes included:
    it goes on everything under /api/uploads, whoever made it (an endpoint, an error handler,
    the CSRF refusal, the router's redirect or 405, the 500)."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app, {"Tus-Resumable": TUS_VERSION}, prefix="/api/uploads")


def tus_endpoint(endpoint: Endpoint) -> Endpoint:
    """Check the protocol version; a refusal names the version we speak. (`Tus-Resumable`
    goes on every answer under /api/uploads: `TusResumableMiddleware`.)"""

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
        return response

    return wrapper


def _service(request: Request) -> Uploads:
    return services_of(request).uploads


def _location(request: Request, upload_id: str) -> str:
    return public_url(request, request.app.url_path_for("upload", upload_id=upload_id))


def _state_headers(request: Request, upload: Upload) -> dict[str, str]:
    """What HEAD (and every successful answer) says about an upload."""
    headers = {
        "Upload-Offset": str(upload.offset),
        "Upload-Length": str(upload.length),
        "Cache-Control": "no-store",
    }
    if upload.metadata:
        headers["Upload-Metadata"] = encode_upload_metadata(upload.metadata)
    if upload.is_partial:
        headers["Upload-Concat"] = PARTIAL
    elif upload.is_final:
        urls = " ".join(_location(request, pid) for pid in upload.partial_ids)
        headers["Upload-Concat"] = f"final;{urls}"
    if upload.video_id is not None:
        headers["Video-Id"] = upload.video_id
    if upload.open:
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
    metadata = upload_metadata(
        request.headers.get("upload-metadata"), max_bytes=settings.max_upload_metadata_bytes
    )
    concat = request.headers.get("upload-concat")
    if concat is not None and concat.startswith("final;"):
        return await _create_final(request, user, concat, metadata)
    if concat not in (None, PARTIAL):
        raise BadRequest(
            "Upload-Concat is 'partial' or 'final;<upload URL> <upload URL> ...'.",
            "Upload-Concat",
        )
    length = header_int(request.headers, "Upload-Length")
    # creation-with-upload: a body is the first chunk; read its headers before creating.
    has_body = _has_body(request)
    checksum = upload_checksum(request.headers.get("upload-checksum"), CHECKSUM_ALGORITHMS)
    uploads = _service(request)
    upload = await uploads.create(user.id, length, metadata, partial=concat == PARTIAL)
    if has_body:
        try:
            upload = await uploads.append(user.id, upload.id, 0, _body(request), checksum)
        except PortalError:
            # Nothing was made that the client can know of: leave no upload behind.
            with anyio.CancelScope(shield=True):
                await uploads.terminate(user.id, upload.id)
            raise
    headers = _state_headers(request, upload)
    headers["Location"] = _location(request, upload.id)
    return Response(status_code=201, headers=headers)


def _has_body(request: Request) -> bool:
    """Does this request carry a body, and is it one we take (`offset+octet-stream`)?"""
    length = optional_header_int(request.headers, "content-length")
    if not length and "transfer-encoding" not in request.headers:
        return False
    _check_offset_content_type(request)
    return True


def _check_offset_content_type(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != OFFSET_CONTENT_TYPE:
        raise UnsupportedContentType(f"Upload bodies must be sent as {OFFSET_CONTENT_TYPE}.")


async def _create_final(
    request: Request, user: User, concat: str, metadata: dict[str, str]
) -> Response:
    """tus concatenation: `Upload-Concat: final;<url> <url> ...` makes one film of finished
    partial uploads, in order. It carries no Upload-Length (the partials' sum) and no body."""
    if "upload-length" in request.headers:
        raise BadRequest(
            "A final upload takes no Upload-Length: its length is its partials' sum.",
            "Upload-Length",
        )
    if optional_header_int(request.headers, "content-length"):
        raise BadRequest("A final upload takes no body.", "body")
    ids = []
    for url in concat.removeprefix("final;").split():
        match = _UPLOAD_PATH.fullmatch(urlsplit(url).path)
        if match is None:
            raise BadRequest(
                f"{url[:100]!r} in Upload-Concat is not an upload URL of this server.",
                "Upload-Concat",
            )
        ids.append(match.group(1))
    upload = await _service(request).concatenate(user.id, ids, metadata)
    headers = _state_headers(request, upload)
    headers["Location"] = _location(request, upload.id)
    return Response(status_code=201, headers=headers)


@tus_endpoint
async def resource(request: Request) -> Response:
    if request.method == "OPTIONS":
        return await options.__wrapped__(request)  # type: ignore[attr-defined]
    method = _method(request)
    user = require_user(request)
    upload_id = request.path_params["upload_id"]
    uploads = _service(request)
    if method == "HEAD":
        upload = await uploads.get(user.id, upload_id)
        return Response(status_code=200, headers=_state_headers(request, upload))
    if method == "DELETE":
        await uploads.terminate(user.id, upload_id)
        return Response(status_code=204)
    # PATCH
    _check_offset_content_type(request)
    offset = header_int(request.headers, "Upload-Offset")
    checksum = upload_checksum(request.headers.get("upload-checksum"), CHECKSUM_ALGORITHMS)
    upload = await uploads.append(user.id, upload_id, offset, _body(request), checksum)
    return Response(status_code=204, headers=_state_headers(request, upload))


def _method(request: Request) -> str:
    """The method meant: a POST with `X-HTTP-Method-Override` is the method it names."""
    override = request.headers.get("x-http-method-override")
    if request.method != "POST":
        return request.method
    if override is None or override.strip().upper() not in OVERRIDABLE:
        raise BadRequest(
            "POST to an upload needs X-HTTP-Method-Override: PATCH or DELETE.",
            "X-HTTP-Method-Override",
        )
    return override.strip().upper()


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
        methods=["HEAD", "PATCH", "DELETE", "OPTIONS", "POST"],
        name="upload",
    ),
]
