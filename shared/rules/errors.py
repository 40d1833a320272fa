"""The one error tree of the service.

Every adapter (Graph, MSAL, Table and Queue Storage, CRM callbacks) maps what it sees into one of
these at its edge, so the core and the triggers decide with a single ``except`` what happens next:

    SyncError
    ├── TransientError      retry the same work later, with backoff (timeouts, 5xx, dropped connections)
    │   └── ThrottledError  retry no earlier than ``retry_after`` seconds (429, 503 with Retry-After)
    ├── PermanentError      record it, show it in status, tell the CRM, and stop (Graph 400, bad data)
    ├── AuthError           the user must sign in again (invalid_grant, revoked consent)
    │   └── OrganizationConsentRequired  app-only: the organisation's admin consent is missing or revoked
    └── ConflictError       someone else wrote first (ETag mismatch): re-read and decide again

Input from the CRM that fails validation is not a SyncError: it never gets that far
(see ``shared.rules.contract.ValidationError``).
"""

from __future__ import annotations


class SyncError(Exception):
    """Base of every failure the service knows how to handle."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code  # e.g. Graph's error.code or MSAL's error
        self.status = status  # HTTP status where one exists


class TransientError(SyncError):
    """Worth retrying as is: the same request may well succeed later."""


class ThrottledError(TransientError):
    """The other side asked us to slow down; do not try again before ``retry_after`` seconds."""

    def __init__(
        self, message: str, *, retry_after: float, code: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


class PermanentError(SyncError):
    """Retrying the same request cannot help; record it and stop."""


class AuthError(SyncError):
    """The user's grant no longer works; they must reconnect (``reauth_required``)."""


class OrganizationConsentRequired(AuthError):
    """An app-only token was refused for the Microsoft tenant: the app has no service principal there
    (never consented, consent revoked, enterprise app deleted). Every app-only user of the CRM tenant
    waits for a new organisation connect (issue 19)."""

    CODE = "organization_consent_required"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message, code=self.CODE, status=status)


class ConflictError(SyncError):
    """An optimistic-concurrency check failed: re-read the current state and plan again."""
