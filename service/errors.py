"""Errors the routes turn into HTTP answers (status code + ``{"detail": message}``, plus ``headers``)."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 500
    headers: dict[str, str] | None = None  # extra response headers

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(ServiceError, ValueError):
    """The request is well-formed JSON but cannot be served as asked (unknown ids, bad features)."""

    status_code = 422


class NotFoundError(ServiceError, LookupError):
    status_code = 404


class ConflictError(ServiceError):
    status_code = 409


class UnauthorizedError(ServiceError):
    """Missing or wrong bearer token (service.api.check_bearer). RFC 9110 asks a 401 to name the scheme it wants."""

    status_code = 401
    headers = {"WWW-Authenticate": "Bearer"}


class ForbiddenError(ServiceError):
    status_code = 403


class UnavailableError(ServiceError):
    """A dependency (bundle not loaded yet, store down for a write) is missing: retry later."""

    status_code = 503
