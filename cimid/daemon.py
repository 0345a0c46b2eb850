"""Assembling the daemon from its configuration: plugins and drivers, the store, the provider and its
family services, and the HTTP application around them. The one place where the layers meet."""

from __future__ import annotations

from aiohttp import web

from . import __version__
from .config import Config, ConfigError, exposed, exposure_error, is_loopback
from .http.app import make_app
from .http.tls import from_front
from .plugins import Drivers, plugin_manager
from .service.provider import Provider
from .store.db import Store


def build_app(config: Config, extra_plugins: tuple = ()) -> web.Application:
    drivers = Drivers.load(plugin_manager(extra_plugins), config)
    store = Store(config.database, config["store"]["synchronous"].upper())
    provider = Provider(config, store, drivers)
    extensions = ()
    if config["server"]["test_api"]:  # assembled only when asked for: production runs carry none of it
        from .http.testing import add_routes
        from .service.testing import TestControl
        control = TestControl(provider)
        extensions = (lambda app: add_routes(app, control),)
    app = make_app(config, provider, extensions)

    async def refuse_open_exposure(_app) -> None:
        """Beyond loopback someone must log in: consumers live in the store, so this is checked once it is
        open (TLS was checked with the rest of the configuration)."""
        if exposed(config) and not config["auth"]["users"] and not await provider.consumers.any():
            await provider.stop()  # a failed start-up is never cleaned up by aiohttp
            raise exposure_error(config, "has no consumer (add one with `cimid consumer add`) and no "
                                         "[[auth.users]], so anyone who reaches the port would be admin")

    async def refuse_open_test_api(_app) -> None:
        """The test-control extension resets and breaks things: beyond loopback, only for someone who
        logged in (server.insecure does not change that)."""
        if config["server"]["test_api"] and not is_loopback(config.listen[0]) and not config["auth"]["users"] \
                and not await provider.consumers.any():
            await provider.stop()
            raise exposure_error(config, "would offer the test-control extension (--test-api) with no consumer "
                                         "and no [[auth.users]] to log in")

    app.on_startup.append(refuse_open_exposure)
    app.on_startup.append(refuse_open_test_api)
    if config["cluster"]["endpoints"]:
        _join_federation(app, config, provider)
    return app


def _join_federation(app: web.Application, config: Config, provider: Provider) -> None:
    """[cluster]: registration under an etcd lease in the background (the node serves whatever etcd
    does), and the fence on federated mutations, inside the error middleware so it answers a CIMI 503."""
    try:
        from .cluster.capacity import node_capacity, node_usage
        from .cluster.node import NodeMembership, fence_middleware
    except ImportError as exc:
        raise ConfigError(f"[cluster] needs the federation extra ({exc.name} is missing): "
                          "pip install 'cimid[federation]'") from None
    if config["cluster"]["tls_ca"] and not config["server"]["tls"]:
        raise ConfigError("cluster.tls_ca set but server.tls is false: fronts reach a node of a TLS federation "
                          "over HTTPS (server.tls_certificate: the node's `cimid cluster certificate`)")
    ratios = config["cluster"]["cpu_allocation_ratio"], config["cluster"]["memory_allocation_ratio"]
    membership = NodeMembership(config, lambda: node_capacity(provider),
                                lambda ids: node_usage(provider, *ratios, ids), __version__)
    ca = config["cluster"]["tls_ca"]
    app.middlewares.append(fence_middleware(membership, (lambda request: from_front(request, ca)) if ca else None))

    async def start(_app) -> None:
        await membership.start()

    async def stop(_app) -> None:
        await membership.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
