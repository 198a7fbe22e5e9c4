"""Sign-up, log-in and log-out for people; `POST /api/tokens` for programs."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from portal.accounts import (
    MAX_EMAIL_LENGTH,
    MAX_PASSWORD_LENGTH,
    SIGNUP_ROLES,
    authenticate,
    create_user,
)
from portal.auth import (
    clear_session_cookie,
    current_user,
    end_session,
    issue_api_token,
    session_token,
    set_session_cookie,
    start_session,
    verify_csrf_form,
)
from portal.errors import InvalidCredentials, PortalError, ValidationFailed
from portal.parsing import exact_shape, text_field
from portal.web import check_rate_limit, read_json, render, services_of

#: Bytes of `POST /api/tokens`: an email and a password, with room to spare.
TOKEN_BODY_LIMIT = 4096


def safe_next(value: object, default: str = "/") -> str:
    """Only same-site paths: `next=//evil.example` must not turn log-in into a redirector."""
    if isinstance(value, str) and value.startswith("/") and not value.startswith(("//", "/\\")):
        return value
    return default


def _form_text(form: Any, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


async def _logged_in(request: Request, user: Any, target: str) -> Response:
    token = await start_session(services_of(request).engine, services_of(request).settings, user)
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(request, response, token)
    return response


async def login(request: Request) -> Response:
    next_url = safe_next(request.query_params.get("next"))
    if request.method == "GET":
        if current_user(request) is not None:
            return RedirectResponse(next_url, status_code=303)
        return render(request, "login.html", {"next": next_url, "email": "", "error": None})
    await check_rate_limit(request, "login")
    form = await verify_csrf_form(request)
    email = _form_text(form, "email")
    next_url = safe_next(form.get("next"), next_url)
    try:
        user = await authenticate(
            services_of(request).engine,
            services_of(request).settings,
            email,
            _form_text(form, "password"),
            hashing=services_of(request).hashing,
        )
    except InvalidCredentials as exc:
        context = {"next": next_url, "email": email, "error": exc.message}
        return render(request, "login.html", context, status_code=exc.status_code)
    return await _logged_in(request, user, next_url)


async def signup(request: Request) -> Response:
    if request.method == "GET":
        context: dict[str, Any] = {
            "values": {"role": "viewer"},
            "error": None,
            "roles": SIGNUP_ROLES,
        }
        return render(request, "signup.html", context)
    await check_rate_limit(request, "signup")
    form = await verify_csrf_form(request)
    values = {name: _form_text(form, name).strip() for name in ("email", "display_name", "role")}
    try:
        if values["role"] not in SIGNUP_ROLES:
            raise ValidationFailed("Choose whether you will watch films or also upload them.")
        user = await create_user(
            services_of(request).engine,
            services_of(request).settings,
            email=values["email"],
            password=_form_text(form, "password"),
            role=values["role"],
            display_name=values["display_name"] or None,
            hashing=services_of(request).hashing,
        )
    except PortalError as exc:
        context = {"values": values, "error": exc.message, "roles": SIGNUP_ROLES}
        return render(request, "signup.html", context, status_code=exc.status_code)
    return await _logged_in(request, user, "/upload" if user.is_creator else "/")


async def logout(request: Request) -> Response:
    await verify_csrf_form(request)
    token = session_token(request)
    if token:
        await end_session(services_of(request).engine, token)
    response = RedirectResponse("/", status_code=303)
    clear_session_cookie(response)
    return response


async def create_token(request: Request) -> Response:
    """`{"email", "password"}` -> `{"token", "expires_at"}` for `Authorization: Bearer`."""
    await check_rate_limit(request, "token")
    body = exact_shape(
        await read_json(request, TOKEN_BODY_LIMIT),
        {"email": str, "password": str},
        '{"email": "...", "password": "..."}',
    )
    email = text_field(body["email"], "email", max_length=MAX_EMAIL_LENGTH)
    password = text_field(body["password"], "password", max_length=MAX_PASSWORD_LENGTH)
    services = services_of(request)
    user = await authenticate(
        services.engine, services.settings, email, password, hashing=services.hashing
    )
    token, expires_at = await issue_api_token(
        services_of(request).engine, services_of(request).settings, user
    )
    return JSONResponse(
        {"token": token, "expires_at": expires_at.isoformat()},
        headers={"Cache-Control": "no-store"},
    )


routes = [
    Route("/login", login, methods=["GET", "POST"], name="login"),
    Route("/signup", signup, methods=["GET", "POST"], name="signup"),
    Route("/logout", logout, methods=["POST"], name="logout"),
    Route("/api/tokens", create_token, methods=["POST"], name="create_token"),
]
