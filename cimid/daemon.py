"""Assembling the daemon from its configuration: plugins and drivers, the store, the provider and its
family services, and the HTTP application around them. The one place where the layers meet."""

from __future__ import annotations

from aiohttp import web

from .config import Config, exposed, exposure_error
from .http.app import make_app
from .plugins import Drivers, plugin_manager
from .service.provider import Provider
from .store.db import Store


def build_app(config: Config, extra_plugins: tuple = ()) -> web.Application:
    drivers = Drivers.load(plugin_manager(extra_plugins), config)
    store = Store(config.database, config["store"]["synchronous"].upper())
    provider = Provider(config, store, drivers)
    app = make_app(config, provider)

    async def refuse_open_exposure(_app) -> None:
        """Beyond loopback someone must log in: consumers live in the store, so this is checked once it is
        open (TLS was checked with the rest of the configuration)."""
        if exposed(config) and not config["auth"]["users"] and not await provider.consumers.any():
            await provider.stop()  # a failed start-up is never cleaned up by aiohttp
            raise exposure_error(config, "has no consumer (add one with `cimid consumer add`) and no "
                                         "[[auth.users]], so anyone who reaches the port would be admin")

    app.on_startup.append(refuse_open_exposure)
    return app
