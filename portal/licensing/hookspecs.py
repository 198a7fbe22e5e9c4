"""Every licensing hook, one function each, named for what it answers or announces.

Decision hooks are `firstresult=True`: the first plugin that answers something other than
None decides. Notification hooks fire after the fact and every implementation runs. Any hook
may answer a value or an awaitable. `portal` is the app's `portal.services.Services`.
Each hook has a section in docs/licensing-hooks.md (a test fails when one is missing).
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "megamovie"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# -- decisions ------------------------------------------------------------------------------


@hookspec(firstresult=True)
def video_offers(portal: Any, video: Any) -> Any:
    """The `VideoOffers` of `video` (preview length and offers); no offers means free."""


@hookspec(firstresult=True)
def viewer_licence(portal: Any, viewer: Any, video: Any, offers: Any, now: Any) -> Any:
    """The `Licence` `viewer` holds for `video` at `now` (full, or a preview)."""


@hookspec(firstresult=True)
def revenue_split(portal: Any, amount: int, currency: str, kind: str, creator_id: str) -> Any:
    """`(creator, platform)` minor units for a charge of `amount`; they must add up to it."""


@hookspec(firstresult=True)
def payment_provider(portal: Any, user_id: str, currency: str) -> Any:
    """The payment provider that takes this user's charge in `currency`."""


# -- notifications --------------------------------------------------------------------------


@hookspec
def playback_granted(portal: Any, viewer: Any, video: Any, licence: Any) -> Any:
    """A viewer was granted playback of a video under `licence`."""


@hookspec
def watch_time_recorded(portal: Any, records: Any) -> Any:
    """Metered seconds were written: a list of `WatchRecord`."""


@hookspec
def purchase_completed(portal: Any, purchase: Any) -> Any:
    """A purchase, rental or subscription was charged and recorded."""


@hookspec
def purchase_refunded(portal: Any, purchase: Any) -> Any:
    """A purchase was refunded and its postings reversed."""


@hookspec
def video_deleted(portal: Any, video_id: str) -> Any:
    """A video was crypto-shredded and its rows deleted."""


@hookspec
def payout_closed(portal: Any, statement: Any) -> Any:
    """A payout period was closed for a creator; `statement` says what was paid."""
