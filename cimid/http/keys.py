"""What the application and each request carry, shared by the HTTP modules."""

from __future__ import annotations

from aiohttp import web

from ..config import Config
from ..service.provider import Provider
from ..wire import Dialect
from .auth import Authenticator, Identity

PROVIDER = web.AppKey("provider", Provider)
AUTH = web.AppKey("auth", Authenticator)
CONFIG = web.AppKey("config", Config)
RENDERINGS = web.AppKey("renderings", object)
DIALECT = web.RequestKey("dialect", Dialect)  # the wire dialect the request speaks
FORMAT = web.RequestKey("format", str)  # the negotiated response format, json or xml
IDENTITY = web.RequestKey("identity", Identity)  # who asks (cimid.http.auth)
