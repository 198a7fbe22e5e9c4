"""One plugin manager per app (never a module global), and hook calls that await.

Plugins come from four places, in this order: the built-in policies (registered `trylast`,
so anything else wins), the portal's own optional plugins that settings turn on (`extra`: the
`stripe` payment provider), the `megamovie` entry-point group of installed distributions, and
the module names in `MEGAMOVIE_PLUGINS`. pluggy asks the last registered first, so a
third-party plugin answers before the optional built-ins and can replace them. pluggy itself
cannot await: `decide` and `notify` call the implementations one by one, in pluggy's order,
and await what they answer.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Iterable
from typing import Any

import pluggy

from portal.errors import PortalError
from portal.licensing import hookspecs, policies

log = logging.getLogger("megamovie.plugins")


class PluginLoadError(PortalError):
    status_code = 500
    code = "plugin_load_error"


class Plugins:
    def __init__(
        self,
        modules: Iterable[str] = (),
        *,
        entry_points: bool = True,
        extra: Iterable[tuple[str, object]] = (),
    ) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.manager.register(policies.BuiltinPolicies(), name="builtin")
        self.extra: list[object] = []
        for name, plugin in extra:
            self.manager.register(plugin, name=name)
            self.extra.append(plugin)
        if entry_points:
            self.manager.load_setuptools_entrypoints(hookspecs.PROJECT)
        for name in modules:
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                raise PluginLoadError(
                    f"MEGAMOVIE_PLUGINS names {name!r}, which cannot be imported: {exc}"
                ) from None
            if self.manager.get_plugin(name) is None:
                self.manager.register(module, name=name)

    async def aclose(self) -> None:
        """Close what the portal's own optional plugins hold open (HTTP clients)."""
        for plugin in self.extra:
            close = getattr(plugin, "aclose", None)
            if close is not None:
                await close()

    def names(self) -> list[str]:
        return sorted(name for name, _ in self.manager.list_name_plugin())

    async def decide(self, hook: str, **kwargs: Any) -> Any:
        """The first answer that is not None, awaiting awaitables (a firstresult hook)."""
        caller = getattr(self.manager.hook, hook)
        # get_hookimpls() lists in registration order; pluggy calls the last one first.
        for impl in reversed(caller.get_hookimpls()):
            result = impl.function(*[kwargs[name] for name in impl.argnames])
            if inspect.isawaitable(result):
                result = await result
            if result is not None:
                return result
        return None

    async def notify(self, hook: str, **kwargs: Any) -> None:
        """Run every implementation. A failing plugin is logged, never fails the caller: the
        event it is told about has already happened."""
        caller = getattr(self.manager.hook, hook)
        for impl in reversed(caller.get_hookimpls()):
            try:
                result = impl.function(*[kwargs[name] for name in impl.argnames])
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("plugin %s failed in %s", impl.plugin_name, hook)
