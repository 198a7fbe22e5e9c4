"""The portal's one secret key, shared by session cookies and playback tokens.

It comes from `settings.secret_key` (MEGAMOVIE_SECRET_KEY) when set; otherwise a random key is
created once in `settings.secret_key_file` (mode 0600) so restarts keep everyone logged in.
"""

from __future__ import annotations

import contextlib
import os
import secrets

from portal.settings import Settings, SettingsError

KEY_BYTES = 32


def load_secret_key(settings: Settings) -> bytes:
    """The secret key as bytes; created in the data dir on first use if none is configured."""
    if settings.secret_key:
        return settings.secret_key.reveal().encode()
    path = settings.secret_key_file
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(KEY_BYTES) + "\n")
        # link() fails if the file exists: when two processes start at once, the first key
        # wins whole and the other process reads it, never a half-written file.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink()
    try:
        return bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise SettingsError(
            f"{path} is not a hex secret key; delete it to have a new one made "
            "(everyone will be logged out) or set MEGAMOVIE_SECRET_KEY"
        ) from None
