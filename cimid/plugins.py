"""The plugin manager and the typed facade core code uses to reach drivers."""

from __future__ import annotations

from dataclasses import dataclass, field

import pluggy

from . import hookspecs
from .config import Config
from .hookspecs import ComputeDriver, MeterSource, NetworkDriver, StorageDriver


def plugin_manager(extra_plugins: tuple = ()) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("cimid")
    pm.add_hookspecs(hookspecs.CimidSpec)
    pm.load_setuptools_entrypoints("cimid")
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()  # an implementation without a spec is a typo: fail at start-up, not later
    return pm


@dataclass
class Drivers:
    """What this node can drive; a capability whose driver is None is not served."""

    compute: ComputeDriver | None = None
    storage: StorageDriver | None = None
    network: NetworkDriver | None = None
    meters: list[MeterSource] = field(default_factory=list)
    _opened: set[str] = field(default_factory=set)

    async def open(self, kind: str) -> None:
        """Open the `kind` driver ("compute", "storage", "network") once; raise DriverError while its
        backend does not answer (the next call tries again)."""
        if kind not in self._opened:
            await getattr(self, kind).open()
            self._opened.add(kind)

    async def close(self) -> None:
        for kind in ("compute", "storage", "network"):
            driver = getattr(self, kind)
            if driver is not None and hasattr(driver, "close"):
                await driver.close()
        self._opened.clear()

    @classmethod
    def load(cls, pm: pluggy.PluginManager, config: Config) -> Drivers:
        hook = pm.hook
        return cls(
            compute=hook.cimid_compute_driver(config=config),
            storage=hook.cimid_storage_driver(config=config),
            network=hook.cimid_network_driver(config=config),
            meters=[source for sources in hook.cimid_meter_sources(config=config) for source in sources],
        )


def describe(pm: pluggy.PluginManager) -> list[tuple[str, list[str]]]:
    """(plugin name, hooks it implements) for `cimid plugins`."""
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        rows.append((name, hooks))
    return rows
