"""Who is asking: session cookies for people, bearer tokens for programs, and CSRF.

A browser session is a random token in a signed cookie (`mm_session`, HttpOnly, SameSite=Lax);
the database keeps only the token's sha256, so a leaked database does not log anyone in. A
bearer token from `POST /api/tokens` is stored the same way. `AuthMiddleware` puts the caller
on `request.state.user` (a `User` or None) for every request.

CSRF: a logged-in session has its own CSRF token; an anonymous visitor (sign-up and log-in
forms) gets a signed double-submit cookie instead. Every HTML form carries `csrf_token`
(checked by `verify_csrf_form`); a cookie-authenticated unsafe request to /api/ must send the
`X-CSRF-Token` header, which a cross-site page cannot set. Bearer requests carry no ambient
authority, so they are exempt.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.cookies import SimpleCookie

from itsdangerous import BadSignature, Signer
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import FormData, MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from portal.accounts import User
from portal.db import api_tokens, sessions, users, utcnow
from portal.errors import AuthenticationRequired, CsrfFailed, PermissionDenied
from portal.http_errors import render_error
from portal.settings import Settings
from portal.web import FORM_BODY_LIMIT, read_form, services_of

SESSION_COOKIE = "mm_session"
CSRF_COOKIE = "mm_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Paths served without looking up the caller: `request.state.user` is always None there.
#: Health and metrics too: they need nobody, and must answer while the database is down.
ANONYMOUS_PREFIXES = ("/static/", "/stream/", "/healthz", "/metrics")
API_TOKEN_PREFIX = "mmt_"  # noqa: S105 - a label that makes leaked tokens greppable


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class SessionCookie:
    """Signs and reads the cookies with the portal's secret key."""

    session_signer: Signer
    csrf_signer: Signer

    @classmethod
    def for_key(cls, key: bytes) -> SessionCookie:
        return cls(Signer(key, salt="mm.session"), Signer(key, salt="mm.csrf"))

    def read(self, signer: Signer, value: str | None) -> str | None:
        if not value:
            return None
        try:
            return signer.unsign(value).decode()
        except BadSignature:
            return None


def cookies_for(request: Request) -> SessionCookie:
    """One SessionCookie per app, made on first use (the data dir exists by then)."""
    state = request.app.state
    signer = getattr(state, "session_cookie", None)
    if signer is None:
        signer = SessionCookie.for_key(services_of(request).secret_key)
        state.session_cookie = signer
    return signer


# -- sessions and tokens in the database ---------------------------------------------------


async def start_session(engine: AsyncEngine, settings: Settings, user: User) -> str:
    """A new session for `user`; returns the raw token that goes (signed) into the cookie."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    async with engine.begin() as conn:
        await conn.execute(
            sessions.insert().values(
                id=_digest(token),
                user_id=user.id,
                csrf_token=secrets.token_urlsafe(32),
                created_at=now,
                expires_at=now + timedelta(seconds=settings.session_ttl_seconds),
            )
        )
    return token


async def end_session(engine: AsyncEngine, token: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(sessions).where(sessions.c.id == _digest(token)))


async def session_user(engine: AsyncEngine, token: str) -> tuple[User, str] | None:
    """The user and CSRF token of a live session, or None when unknown or expired."""
    query = (
        select(users, sessions.c.csrf_token)
        .join(sessions, sessions.c.user_id == users.c.id)
        .where(sessions.c.id == _digest(token), sessions.c.expires_at > utcnow())
    )
    async with engine.connect() as conn:
        row = (await conn.execute(query)).first()
    return (User.from_row(row), row.csrf_token) if row is not None else None


async def issue_api_token(
    engine: AsyncEngine, settings: Settings, user: User
) -> tuple[str, datetime]:
    """A bearer token for `user`, valid for `settings.token_ttl_seconds`."""
    token = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    expires_at = now + timedelta(seconds=settings.token_ttl_seconds)
    async with engine.begin() as conn:
        await conn.execute(
            api_tokens.insert().values(
                id=_digest(token), user_id=user.id, created_at=now, expires_at=expires_at
            )
        )
    return token, expires_at


async def token_user(engine: AsyncEngine, token: str) -> User | None:
    query = (
        select(users)
        .join(api_tokens, api_tokens.c.user_id == users.c.id)
        .where(api_tokens.c.id == _digest(token), api_tokens.c.expires_at > utcnow())
    )
    async with engine.connect() as conn:
        row = (await conn.execute(query)).first()
    return User.from_row(row) if row is not None else None


# -- cookies on responses ------------------------------------------------------------------


def set_session_cookie(request: Request, response: Response, token: str) -> None:
    settings: Settings = services_of(request).settings
    response.set_cookie(
        SESSION_COOKIE,
        cookies_for(request).session_signer.sign(token).decode(),
        max_age=settings.session_ttl_seconds,
        httponly=True,
        samesite="lax",
        secure=settings.secure_cookies,
        path="/",
    )
    # The anonymous CSRF cookie has done its job; the session carries its own token now.
    response.delete_cookie(CSRF_COOKIE, path="/")


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")


def session_token(request: Request) -> str | None:
    """The raw session token from the request's cookie, if its signature is good."""
    signer = cookies_for(request)
    return signer.read(signer.session_signer, request.cookies.get(SESSION_COOKIE))


# -- helpers for routes --------------------------------------------------------------------


def current_user(request: Request) -> User | None:
    return getattr(request.state, "user", None)


def require_user(request: Request) -> User:
    user = current_user(request)
    if user is None:
        message = getattr(request.state, "auth_error", None) or "Log in to do that."
        raise AuthenticationRequired(message)
    return user


def require_role(request: Request, *roles: str) -> User:
    user = require_user(request)
    if user.role not in roles:
        wanted = " or ".join(roles)
        raise PermissionDenied(f"This needs a {wanted} account; yours is a {user.role} account.")
    return user


def csrf_token(request: Request) -> str:
    return getattr(request.state, "csrf_token", "") or ""


async def verify_csrf_form(request: Request, limit: int = FORM_BODY_LIMIT) -> FormData:
    """The submitted form (at most `limit` bytes, every field clean text), after checking its
    `csrf_token`; raises CsrfFailed otherwise."""
    form = await read_form(request, limit)
    sent = form.get(CSRF_FIELD)
    expected = getattr(request.state, "csrf_expected", None)
    if not isinstance(sent, str) or not expected or not same_token(sent, expected):
        raise CsrfFailed(
            "This form has expired or was sent from another site. Reload the page and try again."
        )
    return form


def same_token(sent: str, expected: str) -> bool:
    """Constant-time comparison of a token a client sent. As bytes: `compare_digest` refuses
    str with non-ASCII characters, which a client may well send."""
    return hmac.compare_digest(sent.encode("utf-8", "surrogatepass"), expected.encode())


# -- the middleware ------------------------------------------------------------------------


class AuthMiddleware:
    """Sets `request.state.user` and enforces the CSRF header on cookie-authenticated APIs."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if path.startswith(ANONYMOUS_PREFIXES):
            # Static files need nobody, and streams are authorised by the playback token in
            # their path: no session lookup on these hot paths. (Posters do look the caller
            # up: an unfinished film's poster is its creator's alone.)
            scope.setdefault("state", {}).update(user=None, auth_via=None, csrf_token="")
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        state = scope.setdefault("state", {})
        engine: AsyncEngine = services_of(request).engine
        signer = cookies_for(request)
        user: User | None = None
        via: str | None = None
        csrf: str | None = None
        new_anonymous_csrf: str | None = None

        authorization = request.headers.get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            user = await token_user(engine, credentials.strip())
            if user is None:
                state["auth_error"] = (
                    "Your API token has expired or is not valid; get a new one from "
                    "POST /api/tokens."
                )
            else:
                via = "bearer"
        else:
            token = signer.read(signer.session_signer, request.cookies.get(SESSION_COOKIE))
            found = await session_user(engine, token) if token else None
            if found is not None:
                user, csrf = found
                via = "session"

        if via != "bearer" and csrf is None:
            csrf = signer.read(signer.csrf_signer, request.cookies.get(CSRF_COOKIE))
            if csrf is None and not path.startswith(("/api/", "/stream/")):
                csrf = new_anonymous_csrf = secrets.token_urlsafe(32)
                # A freshly made token was never in a page, so no form can match it yet.
                state["csrf_expected"] = None
            else:
                state["csrf_expected"] = csrf
        else:
            state["csrf_expected"] = csrf

        state["user"] = user
        state["auth_via"] = via
        state["csrf_token"] = csrf or ""

        if via == "session" and scope["method"] in UNSAFE_METHODS and path.startswith("/api/"):
            sent = request.headers.get(CSRF_HEADER, "")
            if not csrf or not same_token(sent, csrf):
                response = render_error(
                    request,
                    403,
                    CsrfFailed.code,
                    "This request needs the X-CSRF-Token header from the page's "
                    '<meta name="csrf-token">; reload the page and try again.',
                )
                await response(scope, receive, send)
                return

        if new_anonymous_csrf is None:
            await self.app(scope, receive, send)
            return

        cookie = SimpleCookie()
        cookie[CSRF_COOKIE] = signer.csrf_signer.sign(new_anonymous_csrf).decode()
        morsel = cookie[CSRF_COOKIE]
        morsel["path"] = "/"
        morsel["httponly"] = True
        morsel["samesite"] = "Lax"
        if self.settings.secure_cookies:
            morsel["secure"] = True

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                # Don't hand a fresh anonymous token to someone who just logged in.
                if not any(
                    v.startswith(f"{SESSION_COOKIE}=") for v in headers.getlist("set-cookie")
                ):
                    headers.append("set-cookie", morsel.OutputString())
            await send(message)

        await self.app(scope, receive, send_with_cookie)
