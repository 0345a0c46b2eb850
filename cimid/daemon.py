"""Assembling the daemon from its configuration: plugins and drivers, the store, the provider and its
family services, and the HTTP application around them. The one place where the layers meet."""

from __future__ import annotations

from aiohttp import web

from .config import Config
from .http.app import make_app
from .plugins import Drivers, plugin_manager
from .service.provider import Provider
from .store.db import Store


def build_app(config: Config, extra_plugins: tuple = ()) -> web.Application:
    drivers = Drivers.load(plugin_manager(extra_plugins), config)
    store = Store(config.database, config["store"]["synchronous"].upper())
    return make_app(config, Provider(config, store, drivers))
