"""Everything a person reads, in Spanish (the default) and English."""

from __future__ import annotations

DEFAULT_LOCALE = "es"
LOCALES = ("es", "en")

TEXT: dict[str, dict[str, str]] = {
    "disconnected": {
        "es": "La sincronización se eliminó correctamente.",
        "en": "The calendar sync was removed successfully.",
    },
    "disconnected_events_kept": {
        "es": "La sincronización se eliminó correctamente. No se pudieron quitar los eventos de Outlook porque "
        "el acceso a Microsoft ya no es válido.",
        "en": "The calendar sync was removed successfully. The Outlook events could not be removed because "
        "access to Microsoft is no longer valid.",
    },
    "connected_title": {"es": "Calendario conectado", "en": "Calendar connected"},
    "connected_body": {
        "es": "Tu calendario de Outlook quedó conectado. Ya puedes cerrar esta ventana.",
        "en": "Your Outlook calendar is connected. You can close this window.",
    },
    "error_title": {"es": "No se pudo conectar el calendario", "en": "The calendar could not be connected"},
    "error_expired": {
        "es": "El enlace de inicio de sesión venció o ya se usó. Vuelve al CRM y pulsa «Acceder con Outlook» otra vez.",
        "en": "The sign-in link has expired or was already used. Go back to the CRM and click "
        "“Sign in with Outlook” again.",
    },
    "error_access_denied": {
        "es": "No se dio el permiso en Microsoft, así que el calendario no se conectó.",
        "en": "Permission was not granted at Microsoft, so the calendar was not connected.",
    },
    "error_account_mismatch": {
        "es": "Este usuario del CRM ya está conectado con otra cuenta de Microsoft. Quita la sincronización antes "
        "de conectar una cuenta distinta.",
        "en": "This CRM user is already connected to another Microsoft account. Remove the sync before "
        "connecting a different account.",
    },
    "error_calendar_not_found": {
        "es": "El calendario elegido ya no existe en Outlook. Elige otro calendario en el CRM e inténtalo de nuevo.",
        "en": "The chosen calendar no longer exists in Outlook. Pick another calendar in the CRM and try again.",
    },
    "error_calendar_not_writable": {
        "es": "No tienes permiso para escribir en el calendario elegido. Elige otro calendario en el CRM.",
        "en": "You cannot write to the chosen calendar. Pick another calendar in the CRM.",
    },
    "error_sign_in_failed": {
        "es": "Microsoft no completó el inicio de sesión. Inténtalo de nuevo en unos minutos.",
        "en": "Microsoft did not complete the sign-in. Please try again in a few minutes.",
    },
    "organization_connected": {
        "es": "Tu organización quedó conectada: el CRM ya puede activar la sincronización de sus usuarios. "
        "Ya puedes cerrar esta ventana.",
        "en": "Your organisation is connected: the CRM can now turn on the sync for its users. "
        "You can close this window.",
    },
    "error_consent_not_granted": {
        "es": "Microsoft no confirmó el consentimiento del administrador para esta organización, así que no se conectó.",
        "en": "Microsoft did not confirm the administrator's consent for this organisation, so it was not connected.",
    },
    "error_tenant_in_use": {
        "es": "Esta organización de Microsoft ya está conectada a otra cuenta del CRM.",
        "en": "This Microsoft organisation is already connected to another CRM account.",
    },
}


def normalize_locale(value: str | None) -> str:
    """``es-CO`` -> ``es``; anything we do not speak -> the default."""
    language = (value or "").strip().lower().replace("_", "-").split("-")[0]
    return language if language in LOCALES else DEFAULT_LOCALE


def from_accept_language(header: str | None) -> str:
    """The first language of an Accept-Language header that we speak (weights in order of appearance)."""
    ranked = []
    for position, item in enumerate((header or "").split(",")):
        tag, _, params = item.strip().partition(";")
        weight = 1.0
        if params.strip().startswith("q="):
            try:
                weight = float(params.strip()[2:])
            except ValueError:
                weight = 0.0
        ranked.append((-weight, position, tag))
    for _, _, tag in sorted(ranked):
        if tag and normalize_locale(tag) == tag.lower().split("-")[0]:
            return tag.lower().split("-")[0]
    return DEFAULT_LOCALE


def text(key: str, locale: str | None) -> str:
    return TEXT[key][normalize_locale(locale)]
