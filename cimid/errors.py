"""One error shape: each exception carries its HTTP status; cimid/http renders it as a CIMI Job."""


class CimiError(Exception):
    status = 500
    title = "internal error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(CimiError):
    status, title = 400, "bad request"


class Unauthorized(CimiError):
    status, title = 401, "unauthorized"

    def __init__(self, message: str):
        super().__init__(message, headers={"WWW-Authenticate": 'Basic realm="cimid"'})


class Forbidden(CimiError):
    status, title = 403, "forbidden"


class NotFound(CimiError):
    status, title = 404, "not found"


class MethodNotAllowed(CimiError):
    status, title = 405, "method not allowed"

    def __init__(self, message: str, allowed: list[str]):
        super().__init__(message, headers={"Allow": ", ".join(allowed)})


class NotAcceptable(CimiError):
    status, title = 406, "not acceptable"


class Conflict(CimiError):
    status, title = 409, "conflict"


class PreconditionFailed(CimiError):
    status, title = 412, "precondition failed"


def check_if_match(etag: str, if_match: str | None) -> None:
    """412 unless If-Match is absent, `*`, or lists `etag` (strong or weak)."""
    if if_match is None:
        return
    tags = {t.strip() for t in if_match.split(",")}
    if "*" not in tags and etag not in tags and f"W/{etag}" not in tags:
        raise PreconditionFailed(f"the resource changed: its ETag is now {etag}, not {if_match}")


class PayloadTooLarge(CimiError):
    status, title = 413, "payload too large"


class UnsupportedMediaType(CimiError):
    status, title = 415, "unsupported media type"


class UnprocessableContent(CimiError):
    status, title = 422, "unprocessable content"


class TooManyRequests(CimiError):
    status, title = 429, "too many requests"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class InternalError(CimiError):
    status, title = 500, "internal error"


class NotImplementedByProvider(CimiError):
    status, title = 501, "not implemented"


class Unavailable(CimiError):
    status, title = 503, "service unavailable"


class DriverError(Exception):
    """Raised by drivers: a host operation failed. `unavailable` means the backend could not be reached."""

    def __init__(self, message: str, *, unavailable: bool = False):
        super().__init__(message)
        self.unavailable = unavailable
