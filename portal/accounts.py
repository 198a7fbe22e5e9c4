"""People: creating accounts and checking passwords.

Passwords are hashed with argon2id at the cost in `Settings` and re-hashed on log-in when that
cost changes. A wrong password and an unknown email give the same error and take the same time,
so the log-in form cannot be used to find out who has an account.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from portal.db import api_tokens, is_id, new_id, sessions, users, utcnow
from portal.errors import Conflict, InvalidCredentials, ValidationFailed
from portal.hashing import HashingPool
from portal.parsing import clean_text
from portal.settings import Settings

T = TypeVar("T")
ROLES = ("viewer", "creator", "admin")
# Admins are made on the command line only, never through the sign-up form.
SIGNUP_ROLES = ("viewer", "creator")
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024  # argon2 would hash megabytes happily; a form should not make it.
MAX_EMAIL_LENGTH = 320
MAX_NAME_LENGTH = 100
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class User:
    id: str
    email: str
    display_name: str
    role: str
    created_at: datetime

    @property
    def is_creator(self) -> bool:
        return self.role in ("creator", "admin")

    @classmethod
    def from_row(cls, row: Any) -> User:
        return cls(row.id, row.email, row.display_name, row.role, row.created_at)


@functools.lru_cache(maxsize=8)
def _hasher(time_cost: int, memory_kib: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)


def password_hasher(settings: Settings) -> PasswordHasher:
    return _hasher(settings.argon2_time_cost, settings.argon2_memory_kib)


@functools.lru_cache(maxsize=8)
def _dummy_hash(time_cost: int, memory_kib: int) -> str:
    return _hasher(time_cost, memory_kib).hash("not anyone's password, only spends the time")


async def _off_loop(hashing: HashingPool | None, work: Callable[..., T], *args: object) -> T:
    """Hashing costs ~20 ms of CPU by design: never on the event loop. The web app passes
    its bounded pool (a full pool refuses at once); the CLI and tests may pass none."""
    if hashing is not None:
        return await hashing.run(work, *args)
    return await anyio.to_thread.run_sync(work, *args)


def normalise_email(email: str) -> str:
    return email.strip().lower()


def check_email(email: str) -> str:
    email = normalise_email(clean_text(email, "email"))
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL.match(email):
        raise ValidationFailed(f"{email or 'An empty email'} is not an email address.")
    return email


def check_password(password: str) -> None:
    clean_text(password, "password")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationFailed(
            f"Choose a password of at least {MIN_PASSWORD_LENGTH} characters; "
            "a few words in a row are easy to remember and hard to guess."
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValidationFailed(f"Passwords are limited to {MAX_PASSWORD_LENGTH} characters.")
    if password.strip() == "":
        raise ValidationFailed("A password cannot be only spaces.")


def check_display_name(name: str) -> str:
    name = " ".join(clean_text(name, "display name").split())
    if not name:
        raise ValidationFailed("Choose a name to show on your channel.")
    if len(name) > MAX_NAME_LENGTH:
        raise ValidationFailed(f"Names are limited to {MAX_NAME_LENGTH} characters.")
    return name


async def create_user(
    engine: AsyncEngine,
    settings: Settings,
    *,
    email: str,
    password: str,
    role: str = "viewer",
    display_name: str | None = None,
    hashing: HashingPool | None = None,
) -> User:
    """Make an account. Raises ValidationFailed for bad input, Conflict if the email is taken."""
    email = check_email(email)
    check_password(password)
    if role not in ROLES:
        raise ValidationFailed(f"Role must be one of {', '.join(ROLES)}, not {role!r}.")
    name = check_display_name(display_name if display_name else email.split("@")[0])
    hashed = await _off_loop(hashing, password_hasher(settings).hash, password)
    user = User(new_id(), email, name, role, utcnow())
    try:
        async with engine.begin() as conn:
            await conn.execute(
                users.insert().values(
                    id=user.id,
                    email=user.email,
                    display_name=user.display_name,
                    password_hash=hashed,
                    role=user.role,
                    created_at=user.created_at,
                )
            )
    except IntegrityError:
        raise Conflict(
            f"There is already an account for {email}; log in, or use another email."
        ) from None
    return user


async def authenticate(
    engine: AsyncEngine,
    settings: Settings,
    email: str,
    password: str,
    *,
    hashing: HashingPool | None = None,
) -> User:
    """The user with this email and password, or InvalidCredentials (same for both failures)."""
    clean_text(email, "email")
    clean_text(password, "password")
    hasher = password_hasher(settings)
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(users).where(users.c.email == normalise_email(email)))
        ).first()
    stored = (
        row.password_hash
        if row is not None
        else _dummy_hash(settings.argon2_time_cost, settings.argon2_memory_kib)
    )
    try:
        await _off_loop(hashing, hasher.verify, stored, password[:MAX_PASSWORD_LENGTH])
        ok = row is not None
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok or row is None:
        raise InvalidCredentials("That email and password do not match an account.")
    if hasher.check_needs_rehash(stored):
        hashed = await _off_loop(hashing, hasher.hash, password)
        async with engine.begin() as conn:
            await conn.execute(
                users.update().where(users.c.id == row.id).values(password_hash=hashed)
            )
    return User.from_row(row)


async def get_user(engine: AsyncEngine, user_id: str) -> User | None:
    if not is_id(user_id):  # from a URL: not worth a query, and NUL would fail one
        return None
    async with engine.connect() as conn:
        row = (await conn.execute(select(users).where(users.c.id == user_id))).first()
    return User.from_row(row) if row is not None else None


async def get_user_by_email(engine: AsyncEngine, email: str) -> User | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(users).where(users.c.email == normalise_email(email)))
        ).first()
    return User.from_row(row) if row is not None else None


async def sweep_expired_logins(engine: AsyncEngine) -> int:
    """Delete expired sessions and API tokens; returns how many. Run by the periodic sweep
    (portal.worker), not per log-in: the delete scans both tables under SQLite's one write
    lock, which at a million accounts would make every log-in wait for it."""
    now = utcnow()
    async with engine.begin() as conn:
        gone = (await conn.execute(delete(sessions).where(sessions.c.expires_at < now))).rowcount
        gone += (
            await conn.execute(delete(api_tokens).where(api_tokens.c.expires_at < now))
        ).rowcount
    return int(gone)
