"""The plugin manager and the typed facade core code uses to reach drivers."""

from __future__ import annotations

from dataclasses import dataclass, field

import pluggy

from . import hookspecs
from .config import Config, ConfigError
from .hookspecs import ComputeDriver, ImageStore, MeterSource, NetworkDriver, StorageDriver


def plugin_manager(extra_plugins: tuple = ()) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("cimid")
    pm.add_hookspecs(hookspecs.CimidSpec)
    pm.load_setuptools_entrypoints("cimid")
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()  # an implementation without a spec is a typo: fail at start-up, not later
    return pm


class StoragePools:
    """The configured storage pools by name, each with its own driver, opened and checked together."""

    def __init__(self, pools: dict[str, StorageDriver], default: str):
        self.pools = pools
        self.default = default
        # What `cimid check` calls this family's driver: the drivers the pools use.
        self.name = "+".join(sorted({pool.name for pool in pools.values()}))

    def pool(self, name: str | None) -> StorageDriver | None:
        return self.pools.get(name or self.default)

    async def open(self) -> None:
        for pool in self.pools.values():
            await pool.open()

    async def close(self) -> None:
        for pool in self.pools.values():
            await pool.close()

    async def health(self) -> dict[str, str]:
        facts = {}
        for name, pool in self.pools.items():
            space = await pool.space()
            facts[f"pool {name}"] = (f"driver {pool.name}{' (default)' if name == self.default else ''}, "
                                     f"{space['free_kb']} KiB free, {space['total_kb'] - space['free_kb']} KiB used "
                                     f"of {space['total_kb']} KiB")
            facts.update({f"pool {name} {k}": v for k, v in (await pool.health()).items()})
        return facts


@dataclass
class Drivers:
    """What this node can drive, one driver per family; a family whose driver is None is not served."""

    compute: ComputeDriver | None = None
    images: ImageStore | None = None
    storage: StoragePools | None = None  # None: no pool configured, Volumes not served
    network: NetworkDriver | None = None
    meters: list[MeterSource] = field(default_factory=list)
    _opened: set[str] = field(default_factory=set)

    KINDS = ("compute", "images", "storage", "network")  # the families with one driver each, for `cimid check`

    async def open(self, kind: str) -> None:
        """Open the `kind` driver ("compute", "images", "storage", "network") once; raise DriverError while
        its backend does not answer (the next call tries again). The compute driver stands on the image
        store, so opening it opens the store first."""
        if kind == "compute" and self.images is not None:
            await self.open("images")
        if kind not in self._opened:
            await getattr(self, kind).open()
            self._opened.add(kind)

    async def close(self) -> None:
        for source in self.meters:  # before compute: a machine source reads through its connection
            await source.close()
        for kind in self.KINDS:  # compute first: it may still be writing into the image store
            driver = getattr(self, kind)
            if driver is not None and hasattr(driver, "close"):
                await driver.close()
        self._opened.clear()

    @classmethod
    def load(cls, pm: pluggy.PluginManager, config: Config) -> Drivers:
        images = load_image_store(pm, config)
        compute = load_compute(pm, config, images)
        storage = load_storage(pm, config)
        network = load_network(pm, config)
        return cls(compute=compute, images=images, storage=storage, network=network,
                   meters=load_meter_sources(pm, config, compute, storage.pools if storage else {}, network))


# One loader per family: the plugin that knows the configured name answers (firstresult), else None.

def load_image_store(pm: pluggy.PluginManager, config: Config) -> ImageStore | None:
    return pm.hook.cimid_image_store(config=config)


def load_compute(pm: pluggy.PluginManager, config: Config, images: ImageStore | None) -> ComputeDriver | None:
    return pm.hook.cimid_compute_driver(config=config, images=images)


def load_storage(pm: pluggy.PluginManager, config: Config) -> StoragePools | None:
    section = config["storage"]
    pools = {}
    for name, settings in section["pools"].items():
        driver = pm.hook.cimid_storage_pool(config=config, name=name, settings=settings)
        if driver is None:
            raise ConfigError(f"storage pool '{name}': no installed plugin provides the driver "
                              f"'{settings.get('driver')}'")
        pools[name] = driver
    return StoragePools(pools, section["default_pool"]) if pools else None


def load_network(pm: pluggy.PluginManager, config: Config) -> NetworkDriver | None:
    return pm.hook.cimid_network_driver(config=config)


def load_meter_sources(pm: pluggy.PluginManager, config: Config, compute: ComputeDriver | None,
                       pools: dict[str, StorageDriver], network: NetworkDriver | None) -> list[MeterSource]:
    return [source for sources in pm.hook.cimid_meter_sources(config=config, compute=compute, pools=pools,
                                                               network=network)
            for source in sources]


def describe(pm: pluggy.PluginManager) -> list[tuple[str, list[str]]]:
    """(plugin name, hooks it implements) for `cimid plugins`."""
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        rows.append((name, hooks))
    return rows
