"""The one configuration object, read once from the environment at the edge.

Every setting is a field of `Settings`; its environment variable is named in the field's
metadata and documented in docs/operations.md (a test fails when one is not). No other module
reads `os.environ`: they are handed a `Settings`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portal.money import CURRENCIES


class SettingsError(ValueError):
    """A setting in the environment cannot be used; the message names the variable."""


class Secret:
    """A string that never shows itself in `repr`, `str` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def _env(name: str, default: Any = None, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"env": name, "secret": secret})


GB = 1000**3


@dataclass(frozen=True)
class Settings:
    data_dir: Path = _env("MEGAMOVIE_DATA_DIR", Path("megamovie-data"))
    database_url: str = _env("MEGAMOVIE_DATABASE_URL", "")
    storage_url: str = _env("MEGAMOVIE_STORAGE_URL", "")
    master_keys: Secret | None = _env("MEGAMOVIE_MASTER_KEYS", None, secret=True)
    secret_key: Secret | None = _env("MEGAMOVIE_SECRET_KEY", None, secret=True)
    metrics_token: Secret | None = _env("MEGAMOVIE_METRICS_TOKEN", None, secret=True)
    s3_endpoint_url: str | None = _env("AWS_ENDPOINT_URL", None)
    s3_region: str = _env("AWS_DEFAULT_REGION", "us-east-1")
    s3_access_key_id: str | None = _env("AWS_ACCESS_KEY_ID", None)
    s3_secret_access_key: Secret | None = _env("AWS_SECRET_ACCESS_KEY", None, secret=True)
    host: str = _env("MEGAMOVIE_HOST", "127.0.0.1")
    port: int = _env("MEGAMOVIE_PORT", 8000)
    header_timeout_seconds: float = _env("MEGAMOVIE_HEADER_TIMEOUT_SECONDS", 10.0)
    keepalive_timeout_seconds: int = _env("MEGAMOVIE_KEEPALIVE_TIMEOUT_SECONDS", 5)
    base_url: str = _env("MEGAMOVIE_BASE_URL", "")
    allowed_hosts: str = _env("MEGAMOVIE_ALLOWED_HOSTS", "*")
    workers: int = _env("MEGAMOVIE_WORKERS", 1)
    quota_bytes: int = _env("MEGAMOVIE_QUOTA_BYTES", 50 * GB)
    max_upload_bytes: int = _env("MEGAMOVIE_MAX_UPLOAD_BYTES", 50 * GB)
    upload_expiry_seconds: int = _env("MEGAMOVIE_UPLOAD_EXPIRY_SECONDS", 24 * 3600)
    max_open_uploads: int = _env("MEGAMOVIE_MAX_OPEN_UPLOADS", 20)
    max_upload_metadata_bytes: int = _env("MEGAMOVIE_MAX_UPLOAD_METADATA_BYTES", 32 * 1024)
    token_ttl_seconds: int = _env("MEGAMOVIE_TOKEN_TTL_SECONDS", 3600)
    session_ttl_seconds: int = _env("MEGAMOVIE_SESSION_TTL_SECONDS", 14 * 24 * 3600)
    max_duration_seconds: float = _env("MEGAMOVIE_MAX_DURATION_SECONDS", 4 * 3600.0)
    max_pixels: int = _env("MEGAMOVIE_MAX_PIXELS", 3840 * 2160)
    segment_seconds: float = _env("MEGAMOVIE_SEGMENT_SECONDS", 4.0)
    transcode_preset: str = _env("MEGAMOVIE_TRANSCODE_PRESET", "veryfast")
    transcode_timeout_seconds: float = _env("MEGAMOVIE_TRANSCODE_TIMEOUT_SECONDS", 6 * 3600.0)
    job_lease_seconds: float = _env("MEGAMOVIE_JOB_LEASE_SECONDS", 60.0)
    job_max_attempts: int = _env("MEGAMOVIE_JOB_MAX_ATTEMPTS", 3)
    vault_chunk_size: int = _env("MEGAMOVIE_VAULT_CHUNK_SIZE", 256 * 1024)
    ffmpeg: str = _env("MEGAMOVIE_FFMPEG", "ffmpeg")
    ffprobe: str = _env("MEGAMOVIE_FFPROBE", "ffprobe")
    argon2_time_cost: int = _env("MEGAMOVIE_ARGON2_TIME_COST", 2)
    argon2_memory_kib: int = _env("MEGAMOVIE_ARGON2_MEMORY_KIB", 19 * 1024)
    rate_limit_per_minute: int = _env("MEGAMOVIE_RATE_LIMIT_PER_MINUTE", 30)
    signup_rate_per_second: float = _env("MEGAMOVIE_SIGNUP_RATE_PER_SECOND", 100.0)
    login_rate_per_second: float = _env("MEGAMOVIE_LOGIN_RATE_PER_SECOND", 200.0)
    hash_threads: int = _env("MEGAMOVIE_HASH_THREADS", 0)
    hash_queue: int = _env("MEGAMOVIE_HASH_QUEUE", 16)
    max_in_flight: int = _env("MEGAMOVIE_MAX_IN_FLIGHT", 512)
    max_in_flight_new: int = _env("MEGAMOVIE_MAX_IN_FLIGHT_NEW", 64)
    secure_cookies: bool = _env("MEGAMOVIE_SECURE_COOKIES", False)
    db_timeout_seconds: float = _env("MEGAMOVIE_DB_TIMEOUT_SECONDS", 5.0)
    db_statement_timeout_seconds: float = _env("MEGAMOVIE_DB_STATEMENT_TIMEOUT_SECONDS", 30.0)
    s3_timeout_seconds: float = _env("MEGAMOVIE_S3_TIMEOUT_SECONDS", 5.0)
    forwarded_allow_ips: str = _env("MEGAMOVIE_FORWARDED_ALLOW_IPS", "")
    plugins: str = _env("MEGAMOVIE_PLUGINS", "")
    max_streams: int = _env("MEGAMOVIE_MAX_STREAMS", 2)
    stream_idle_seconds: float = _env("MEGAMOVIE_STREAM_IDLE_SECONDS", 150.0)
    metering_flush_seconds: float = _env("MEGAMOVIE_METERING_FLUSH_SECONDS", 5.0)
    creator_share_bps: int = _env("MEGAMOVIE_CREATOR_SHARE_BPS", 9000)
    pass_amount: int = _env("MEGAMOVIE_PASS_AMOUNT", 999)
    pass_currency: str = _env("MEGAMOVIE_PASS_CURRENCY", "EUR")
    development_payments: bool = _env("MEGAMOVIE_DEVELOPMENT_PAYMENTS", True)
    stripe_secret_key: Secret | None = _env("MEGAMOVIE_STRIPE_SECRET_KEY", None, secret=True)
    stripe_publishable_key: str = _env("MEGAMOVIE_STRIPE_PUBLISHABLE_KEY", "")
    stripe_webhook_secret: Secret | None = _env(
        "MEGAMOVIE_STRIPE_WEBHOOK_SECRET", None, secret=True
    )
    stripe_api_base: str = _env("MEGAMOVIE_STRIPE_API_BASE", "")
    log_level: str = _env("MEGAMOVIE_LOG_LEVEL", "info")
    metrics_dir: Path | None = _env("MEGAMOVIE_METRICS_DIR", None)

    def __post_init__(self) -> None:
        data_dir = Path(self.data_dir).absolute()
        object.__setattr__(self, "data_dir", data_dir)
        if not self.database_url:
            object.__setattr__(
                self, "database_url", f"sqlite+aiosqlite:///{data_dir / 'megamovie.db'}"
            )
        metrics_dir = Path(self.metrics_dir) if self.metrics_dir else data_dir / "metrics"
        object.__setattr__(self, "metrics_dir", metrics_dir.absolute())
        if not self.storage_url:
            object.__setattr__(self, "storage_url", (data_dir / "objects").as_uri())
        if self.vault_chunk_size < 1024 or self.vault_chunk_size > 16 * 1024 * 1024:
            raise SettingsError("MEGAMOVIE_VAULT_CHUNK_SIZE must be between 1 KiB and 16 MiB")
        if self.workers < 0:
            raise SettingsError("MEGAMOVIE_WORKERS must be 0 or more")
        if self.max_in_flight_new < 1 or self.max_in_flight < self.max_in_flight_new:
            raise SettingsError(
                "MEGAMOVIE_MAX_IN_FLIGHT_NEW must be at least 1 and at most MEGAMOVIE_MAX_IN_FLIGHT"
            )
        if self.hash_threads < 0 or self.hash_queue < 0:
            raise SettingsError("MEGAMOVIE_HASH_THREADS and MEGAMOVIE_HASH_QUEUE must be 0 or more")
        if self.token_ttl_seconds <= 0:
            raise SettingsError("MEGAMOVIE_TOKEN_TTL_SECONDS must be positive")
        if self.base_url:
            scheme, _, rest = self.base_url.partition("://")
            if scheme not in ("http", "https") or not rest or any(c in rest for c in "?#"):
                raise SettingsError(
                    "MEGAMOVIE_BASE_URL must be like https://films.example.org (a scheme, a "
                    f"host and optionally a path), not {self.base_url!r}"
                )
            object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if not 0 <= self.creator_share_bps <= 10_000:
            raise SettingsError(
                "MEGAMOVIE_CREATOR_SHARE_BPS must be 0..10000 basis points (9000 is 90%)"
            )
        if self.pass_amount <= 0:
            raise SettingsError("MEGAMOVIE_PASS_AMOUNT must be a positive number of minor units")
        if self.pass_currency not in CURRENCIES:
            raise SettingsError(
                f"MEGAMOVIE_PASS_CURRENCY must be an ISO 4217 code we handle, not "
                f"{self.pass_currency!r}"
            )

        if self.stripe_secret_key and not self.stripe_webhook_secret:
            raise SettingsError(
                "MEGAMOVIE_STRIPE_SECRET_KEY is set but MEGAMOVIE_STRIPE_WEBHOOK_SECRET is not: "
                "without it no Stripe webhook can be verified (copy the endpoint's signing "
                "secret, whsec_..., from the Stripe dashboard)"
            )
        if self.stripe_api_base and not self.stripe_api_base.startswith(("https://", "http://")):
            raise SettingsError(
                "MEGAMOVIE_STRIPE_API_BASE must be an http(s) URL such as http://127.0.0.1:8420"
            )

    @property
    def stripe_enabled(self) -> bool:
        """Top-ups go through Stripe (`portal.stripe_payments`) when a secret key is set."""
        return bool(self.stripe_secret_key)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every setting from `environ` (default: the process environment).

        Keyword overrides win over the environment; the CLI uses them for flags.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def plugin_modules(self) -> list[str]:
        return [name.strip() for name in self.plugins.split(",") if name.strip()]

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def documented_names(cls) -> list[str]:
        return [f.metadata["env"] for f in dataclasses.fields(cls)]

    @property
    def host_names(self) -> tuple[str, ...]:
        """`MEGAMOVIE_ALLOWED_HOSTS` as lower-case names; `("*",)` allows any."""
        names = tuple(n.strip().lower() for n in self.allowed_hosts.split(",") if n.strip())
        return ("*",) if "*" in names or not names else names

    # Derived locations inside the data dir, one place for all of them.
    @property
    def key_file(self) -> Path:
        return self.data_dir / "master.keys"

    @property
    def secret_key_file(self) -> Path:
        return self.data_dir / "secret.key"

    @property
    def scratch_dir(self) -> Path:
        """Parent of every job's private temp dir; emptied at start-up."""
        return self.data_dir / "scratch"


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    name = f.metadata["env"]
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if f.metadata["secret"]:
            return Secret(raw)
        if kind == "Path":
            return Path(raw)
        if kind == "int":
            return int(raw.replace("_", ""))
        if kind == "float":
            return float(raw)
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind}") from None
    return raw
