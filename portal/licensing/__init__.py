"""Licensing: who may watch what, decided by pluggy hooks.

`hookspecs` declares every hook (documented in docs/licensing-hooks.md); `plugins` builds one
plugin manager per app and calls hooks that may answer a value or an awaitable; `policies`
holds the built-in decisions, registered `trylast` so any plugin can replace them; `offers`
stores what a creator sets; `licences` is the decision's result; `streams` counts the streams
a viewer has open.
"""
