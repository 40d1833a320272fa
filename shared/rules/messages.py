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
    "error_other_browser": {
        "es": "Este inicio de sesión se empezó en otro navegador, así que no se conectó ningún calendario. "
        "Abre el CRM en este navegador y pulsa «Acceder con Outlook» desde aquí.",
        "en": "This sign-in was started in another browser, so no calendar was connected. Open the CRM "
        "in this browser and click “Sign in with Outlook” from here.",
    },
    "error_account_not_confirmed": {
        "es": "No se conectó la cuenta de Microsoft porque no se confirmó.",
        "en": "The Microsoft account was not connected because it was not confirmed.",
    },
    "error_removal_in_progress": {
        "es": "Todavía se están quitando de Outlook los eventos de la sincronización anterior. Vuelve a "
        "intentarlo cuando termine.",
        "en": "The events of the previous sync are still being removed from Outlook. Try again once that "
        "has finished.",
    },
    "confirm_account_title": {"es": "Confirma la cuenta", "en": "Confirm the account"},
    "confirm_account_body": {
        "es": "Iniciaste sesión como {account}, pero el CRM esperaba {expected}. ¿Conectar el calendario "
        "de {account}?",
        "en": "You signed in as {account}, but the CRM expected {expected}. Connect the calendar of "
        "{account}?",
    },
    "confirm_account_yes": {"es": "Conectar {account}", "en": "Connect {account}"},
    "confirm_account_no": {"es": "Cancelar", "en": "Cancel"},
    "disconnected_removing": {
        "es": "La sincronización se eliminó correctamente. Los eventos se están quitando de Outlook; "
        "te avisaremos cuando termine.",
        "en": "The calendar sync was removed successfully. The events are being removed from Outlook; "
        "you will be told when that has finished.",
    },
    "removal_in_progress": {
        "es": "Todavía se están quitando de Outlook los eventos de la sincronización anterior. Vuelve a "
        "conectar cuando termine.",
        "en": "The events of the previous sync are still being removed from Outlook. Connect again once "
        "that has finished.",
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
