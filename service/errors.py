"""Errors the routes turn into HTTP answers (status code + ``{"detail": message}``)."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 500

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
    status_code = 401


class ForbiddenError(ServiceError):
    status_code = 403


class UnavailableError(ServiceError):
    """A dependency (bundle not loaded yet, store down for a write) is missing: retry later."""

    status_code = 503
