"""Typed errors for Kubernetes API calls.

Every failure of :class:`hami.kube.client.KubeClient` is a :class:`KubeError`:

* :class:`ApiError` — the server answered with a non-2xx status (or a watch ``ERROR`` event).
  Subclasses for the statuses callers act on: :class:`NotFoundError` (404),
  :class:`ConflictError` (409, a failed ``resourceVersion``/``uid`` precondition or an already
  bound pod), :class:`AlreadyExistsError` (409 with reason ``AlreadyExists``, a subclass of
  ``ConflictError``), :class:`GoneError` (410, an expired ``resourceVersion`` or ``continue``).
* :class:`TransportError` — the request never got an answer (connection refused or reset,
  timeout, TLS failure).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlreadyExistsError",
    "ApiError",
    "ConflictError",
    "GoneError",
    "KubeError",
    "NotFoundError",
    "TransportError",
    "error_from_status",
]


class KubeError(Exception):
    """Base class of every error raised by ``hami.kube``."""


class TransportError(KubeError):
    """No HTTP answer: connection, TLS or timeout failure."""


class ApiError(KubeError):
    """The API server answered with an error ``Status``."""

    def __init__(self, status: int, reason: str = "", message: str = "", body: Any = None) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body
        super().__init__(f"{status} {reason}: {message}" if reason else f"{status}: {message}")


class NotFoundError(ApiError):
    """404 Not Found."""


class ConflictError(ApiError):
    """409 Conflict: a precondition (resourceVersion, uid) failed or the object changed."""


class AlreadyExistsError(ConflictError):
    """409 with reason AlreadyExists: create of an object that exists."""


class GoneError(ApiError):
    """410 Gone: the requested resourceVersion (or list continue token) has been compacted."""


def error_from_status(status: int, body: Any) -> ApiError:
    """Build the most specific :class:`ApiError` for an HTTP status and a (decoded) body.

    ``body`` is usually a ``Status`` dict; anything else is kept as the message.
    """
    reason = ""
    message = ""
    if isinstance(body, dict):
        reason = str(body.get("reason") or "")
        message = str(body.get("message") or "")
        code = body.get("code")
        if isinstance(code, int) and code >= 400:
            status = code
    elif isinstance(body, bytes | str):
        message = body.decode(errors="replace") if isinstance(body, bytes) else body
        message = message[:1000]
    cls: type[ApiError]
    if status == 404:
        cls = NotFoundError
    elif status == 409:
        cls = AlreadyExistsError if reason == "AlreadyExists" else ConflictError
    elif status == 410:
        cls = GoneError
    else:
        cls = ApiError
    return cls(status, reason, message, body)
