"""A third-party-style plugin: accredited press (emails at press.example) watch every film in
full, whatever it costs.

Installed in tests through a real `megamovie` entry point (a distribution's metadata on
sys.path), exactly as a pip-installed plugin would be.
"""

from __future__ import annotations

from typing import Any

from portal.licensing.hookspecs import hookimpl
from portal.licensing.licences import Licence


@hookimpl
async def viewer_licence(viewer: Any) -> Licence | None:
    user = viewer.user
    if user is not None and user.email.endswith("@press.example"):
        return Licence.whole("press")
    return None
