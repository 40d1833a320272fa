// The CRM stand-in page: plain JS, no build step, nothing from the network but this console's server.
"use strict";

const TEXT = {
  es: {
    brand: "CRM de demostración", crumb_calendars: "Calendarios", crumb_list: "Lista de actividades",
    activities_title: "Lista de actividades", col_subject: "Asunto", col_type: "Tipo", col_status: "Estado",
    col_when: "Inicio (zona del CRM)", col_related: "Relacionado con", col_outlook: "Outlook",
    no_activities: "Aún no hay actividades.", add_title: "Agregar actividad", f_subject: "Asunto",
    f_type: "Tipo de actividad", f_status: "Estado", f_show: "Mostrar en calendarios", f_all_day: "Todo el día",
    f_start_date: "Fecha de inicio", f_start_time: "Hora de inicio", f_end_date: "Fecha de fin",
    f_end_time: "Hora de fin", f_zone: "Zona horaria", f_deal: "Negocio", f_company: "Empresa",
    f_contact: "Contacto", f_contact_email: "Correo del contacto", f_location: "Ubicación",
    f_description: "Descripción", f_save: "Guardar actividad",
    st_planned: "Planificada", st_completed: "Completada", st_cancelled: "Cancelada",
    type_calendar: "con calendario", type_no_calendar: "sin calendario",
    ms_title: "Calendario Microsoft",
    ms_intro: "Tus actividades planificadas aparecen en tu calendario de Outlook, a la hora exacta.",
    ms_account: "Cuenta de Microsoft", btn_connect: "Acceder con Outlook", btn_sync: "Sincronizar",
    cal_label: "Calendario de Outlook", cal_switch: "Usar este calendario", cal_dedicated: "Un calendario «CRM» propio (nuevo)",
    cal_default: "{name} (predeterminado)", cal_in_use: "Tus actividades van a: {name}", cal_moving: "Moviendo eventos: {moved} de {total}",
    cal_switched: "Calendario cambiado. Tus eventos se están moviendo.", cal_same: "Ya usas ese calendario.",
    out_teams: "Unirse a Teams", out_no_teams: "Sin enlace de Teams (la cuenta no lo permite)",
    btn_disconnect: "Remover sincronización", remove_choice: "Eventos ya creados en Outlook",
    remove_none: "Conservarlos", remove_future: "Quitar los futuros", remove_all: "Quitarlos todos",
    status_title: "Estado de la conexión", s_state: "Estado", s_account: "Cuenta", s_crm_zone: "Zona horaria del CRM",
    s_mailbox_zone: "Zona horaria del buzón", s_counts: "Actividades en Outlook", s_backfill: "Sincronización",
    s_last_sync: "Última sincronización", s_subscription: "Suscripción vence", s_errors: "Errores recientes",
    state_never_connected: "Sin conectar", state_connected: "Conectado", state_reauth_required: "Debe volver a acceder",
    state_disconnected: "Desconectado", state_unknown: "Servicio no disponible",
    counts: "{synced} en Outlook · {pending} pendientes · {failed} con error", no_errors: "Ninguno",
    cb_title: "Avisos del servicio (callbacks firmados)", cb_none: "Ninguno todavía.", cb_verified: "firma verificada",
    cb_rejected: "{n} aviso(s) rechazado(s) por firma no válida.",
    ol_title: "Outlook (emulado)", ol_day: "Día", ol_week: "Semana", ol_today: "Hoy", ol_go: "Ir a",
    ol_all_day: "Todo el día", ol_mailbox: "Calendario de {name} <{account}> —",
    ol_zone: "horas en la zona del buzón: {zone} ({iana})", ol_unavailable: "La vista de Outlook solo existe con el emulador local.",
    banner_connected: "Conectado con Outlook. Tus actividades planificadas irán a tu calendario.",
    banner_error: "No se pudo conectar con Outlook ({reason}).",
    reason_access_denied: "no se dio el permiso", reason_account_mismatch: "ya hay otra cuenta conectada: remueve la sincronización primero",
    reason_expired: "el inicio de sesión venció", reason_sign_in_failed: "el inicio de sesión falló",
    reason_temporarily_unavailable: "el servicio no está disponible ahora",
    reason_account_not_confirmed: "no se confirmó la cuenta", reason_removal_in_progress: "aún se están quitando los eventos anteriores",
    removing: "Quitando {n} evento(s) de Outlook…",
    out_none: "—", out_no_calendar: "No va al calendario", out_synced: "En Outlook", out_removed: "Quitada de Outlook",
    out_failed: "Error: {message}", out_deleted: "Borrada en Outlook", out_changed: "Cambiada en Outlook",
    out_pending: "Pendiente (usa Sincronizar)", out_disconnected: "Sin sincronización",
    out_backfilled: "En Outlook (Sincronizar)", out_backfill_failed: "Sincronizar: revisar errores",
    bf_receiving: "recibiendo", bf_running: "en curso", bf_completed: "completa", out_sent: "Enviada…", out_open: "abrir",
    saved_pushed: "Actividad guardada y enviada al servicio.",
    saved_local: "Actividad guardada en el CRM. Aún no hay conexión: «Sincronizar» la cargará después.",
    saved_error: "No se guardó: {fields}", push_error: "Guardada, pero el servicio respondió {status}: {message}",
    connecting: "Abriendo el inicio de sesión de Microsoft…",
    sync_started: "Sincronización en curso: {n} actividad(es) enviadas.",
    sync_done: "Sincronización completa: {created} creadas, {updated} actualizadas, {unchanged} sin cambios, {ineligible} no van al calendario, {failed} con error.",
    sync_dry: "Plan recibido.", sync_missing: "«Sincronizar» no está disponible en este servicio (HTTP {status}: {message}).",
    service_error: "El servicio respondió {status}: {message}", unreachable: "No se pudo contactar al servicio.",
    events_removed: "{n} evento(s) quitados de Outlook.", lang_other: "English",
    dir_title: "Cambios hechos en Outlook",
    dir_intro: "Por campo: «Outlook ↔ CRM» trae al CRM lo que el usuario cambie en Outlook; «Solo CRM → Outlook» lo deja en Outlook hasta el próximo cambio en el CRM.",
    dir_save: "Guardar", dir_saved: "Guardado.", dir_two_way: "Outlook ↔ CRM", dir_crm_to_outlook: "Solo CRM → Outlook",
    dir_subject: "Asunto", dir_description: "Notas (descripción)", dir_location: "Ubicación", dir_times: "Fecha y hora",
    dir_reminder: "Recordatorio",
    edit_note: "Outlook cambió esto: {fields}", edit_conflict: "a la vez que el CRM (ganó el CRM en Outlook)",
    fld_subject: "asunto", fld_description: "notas", fld_location: "ubicación", fld_start: "inicio", fld_end: "fin",
    fld_all_day: "todo el día", fld_reminder_minutes: "recordatorio",
    cap_label: "Reuniones agendadas en Outlook", cap_off: "No traerlas al CRM",
    cap_external: "Solo las que tienen personas de fuera", cap_all: "Todas las que tienen asistentes",
    mt_title: "Reuniones de Outlook",
    mt_intro: "Reuniones agendadas directamente en Outlook que el servicio informó al CRM. «Registrar como actividad» las enlaza sin crear otro evento.",
    mt_subject: "Asunto", mt_when: "Cuándo (zona del buzón)", mt_attendees: "Asistentes", mt_crm: "CRM",
    mt_none: "Ninguna reunión de Outlook todavía.", mt_adopt: "Registrar como actividad",
    mt_recorded: "Registrada como actividad", mt_recording: "Registrando…", mt_cancelled: "Cancelada en Outlook",
    mt_gone: "Borrada en Outlook", mt_organizer: "organiza", mt_adopted: "Reunión registrada como actividad {id}.",
    mt_error: "No se registró: {message}",
    org_title: "Organización",
    org_intro: "Un administrador de Microsoft 365 da su consentimiento una vez y el CRM activa a cada usuario por su buzón, sin que inicie sesión.",
    org_state: "Estado de la organización", org_mode: "Modo del usuario", btn_org_connect: "Conectar organización",
    org_mailbox: "Buzón del usuario (correo o id)", btn_enable: "Activar usuario",
    org_never_connected: "Sin conectar", org_connected: "Conectada", org_consent_required: "Falta el consentimiento",
    org_disconnected: "Desconectada", mode_delegated: "Con su propio inicio de sesión", mode_organization: "Por la organización",
    org_opening: "Abriendo el consentimiento de administrador de Microsoft…", org_enabling: "Activando el usuario…",
    org_back_connected: "Organización conectada. Ya puedes activar usuarios.", org_back_error: "La organización no se conectó ({reason}).",
    state_access_denied: "Fuera del alcance permitido por el administrador", state_mailbox_not_found: "El buzón no existe",
    state_organization_consent_required: "Falta el consentimiento de la organización",
  },
  en: {
    brand: "Demo CRM", crumb_calendars: "Calendars", crumb_list: "Activity list",
    activities_title: "Activity list", col_subject: "Subject", col_type: "Type", col_status: "Status",
    col_when: "Start (CRM time zone)", col_related: "Related to", col_outlook: "Outlook",
    no_activities: "No activities yet.", add_title: "Add activity", f_subject: "Subject",
    f_type: "Activity type", f_status: "Status", f_show: "Show in calendars", f_all_day: "All day",
    f_start_date: "Start date", f_start_time: "Start time", f_end_date: "End date",
    f_end_time: "End time", f_zone: "Time zone", f_deal: "Deal", f_company: "Company",
    f_contact: "Contact", f_contact_email: "Contact email", f_location: "Location",
    f_description: "Description", f_save: "Save activity",
    st_planned: "Planned", st_completed: "Completed", st_cancelled: "Cancelled",
    type_calendar: "calendar", type_no_calendar: "no calendar",
    ms_title: "Microsoft calendar",
    ms_intro: "Your planned activities show up in your Outlook calendar, at the exact time.",
    ms_account: "Microsoft account", btn_connect: "Sign in with Outlook", btn_sync: "Sync",
    cal_label: "Outlook calendar", cal_switch: "Use this calendar", cal_dedicated: "A \u201cCRM\u201d calendar of its own (new)",
    cal_default: "{name} (default)", cal_in_use: "Your activities go to: {name}", cal_moving: "Moving events: {moved} of {total}",
    cal_switched: "Calendar changed. Your events are being moved.", cal_same: "That calendar is already in use.",
    out_teams: "Join on Teams", out_no_teams: "No Teams link (the account does not allow it)",
    btn_disconnect: "Remove sync", remove_choice: "Events already in Outlook",
    remove_none: "Keep them", remove_future: "Remove future ones", remove_all: "Remove all",
    status_title: "Connection status", s_state: "State", s_account: "Account", s_crm_zone: "CRM time zone",
    s_mailbox_zone: "Mailbox time zone", s_counts: "Activities in Outlook", s_backfill: "Sync",
    s_last_sync: "Last sync", s_subscription: "Subscription expires", s_errors: "Recent errors",
    state_never_connected: "Not connected", state_connected: "Connected", state_reauth_required: "Sign in again",
    state_disconnected: "Disconnected", state_unknown: "Service unavailable",
    counts: "{synced} in Outlook · {pending} pending · {failed} failed", no_errors: "None",
    cb_title: "Service notices (signed callbacks)", cb_none: "None yet.", cb_verified: "signature verified",
    cb_rejected: "{n} notice(s) rejected for a bad signature.",
    ol_title: "Outlook (emulated)", ol_day: "Day", ol_week: "Week", ol_today: "Today", ol_go: "Go to",
    ol_all_day: "All day", ol_mailbox: "{name} <{account}>'s calendar —",
    ol_zone: "times in the mailbox's zone: {zone} ({iana})", ol_unavailable: "The Outlook view exists only with the local emulator.",
    banner_connected: "Connected to Outlook. Your planned activities will go to your calendar.",
    banner_error: "Could not connect to Outlook ({reason}).",
    reason_access_denied: "permission was not given", reason_account_mismatch: "another account is connected: remove sync first",
    reason_expired: "the sign-in expired", reason_sign_in_failed: "the sign-in failed",
    reason_temporarily_unavailable: "the service is unavailable right now",
    reason_account_not_confirmed: "the account was not confirmed", reason_removal_in_progress: "the previous events are still being removed",
    removing: "Removing {n} event(s) from Outlook…",
    out_none: "—", out_no_calendar: "Not for the calendar", out_synced: "In Outlook", out_removed: "Removed from Outlook",
    out_failed: "Error: {message}", out_deleted: "Deleted in Outlook", out_changed: "Changed in Outlook",
    out_pending: "Pending (use Sync)", out_disconnected: "Not synced",
    out_backfilled: "In Outlook (Sync)", out_backfill_failed: "Sync: check errors",
    bf_receiving: "receiving", bf_running: "running", bf_completed: "complete", out_sent: "Sent…", out_open: "open",
    saved_pushed: "Activity saved and sent to the service.",
    saved_local: "Activity saved in the CRM. Not connected yet: “Sync” will load it later.",
    saved_error: "Not saved: {fields}", push_error: "Saved, but the service answered {status}: {message}",
    connecting: "Opening Microsoft sign-in…",
    sync_started: "Sync running: {n} activity(ies) sent.",
    sync_done: "Sync complete: {created} created, {updated} updated, {unchanged} unchanged, {ineligible} not for the calendar, {failed} failed.",
    sync_dry: "Plan received.", sync_missing: "“Sync” is not available on this service (HTTP {status}: {message}).",
    service_error: "The service answered {status}: {message}", unreachable: "The service could not be reached.",
    events_removed: "{n} event(s) removed from Outlook.", lang_other: "Español",
    dir_title: "Changes made in Outlook",
    dir_intro: "Per field: “Outlook ↔ CRM” brings what the user changes in Outlook back to the CRM; “CRM → Outlook only” leaves it in Outlook until the CRM's next change.",
    dir_save: "Save", dir_saved: "Saved.", dir_two_way: "Outlook ↔ CRM", dir_crm_to_outlook: "CRM → Outlook only",
    dir_subject: "Subject", dir_description: "Notes (description)", dir_location: "Location", dir_times: "Date and time",
    dir_reminder: "Reminder",
    edit_note: "Outlook changed this: {fields}", edit_conflict: "while the CRM changed it too (the CRM won in Outlook)",
    fld_subject: "subject", fld_description: "notes", fld_location: "location", fld_start: "start", fld_end: "end",
    fld_all_day: "all day", fld_reminder_minutes: "reminder",
    cap_label: "Meetings booked in Outlook", cap_off: "Do not bring them to the CRM",
    cap_external: "Only those with outside people", cap_all: "All those with attendees",
    mt_title: "Outlook meetings",
    mt_intro: "Meetings booked straight in Outlook that the service reported to the CRM. “Record as activity” links one without creating another event.",
    mt_subject: "Subject", mt_when: "When (mailbox time zone)", mt_attendees: "Attendees", mt_crm: "CRM",
    mt_none: "No Outlook meetings yet.", mt_adopt: "Record as activity",
    mt_recorded: "Recorded as activity", mt_recording: "Recording…", mt_cancelled: "Cancelled in Outlook",
    mt_gone: "Deleted in Outlook", mt_organizer: "organizer", mt_adopted: "Meeting recorded as activity {id}.",
    mt_error: "Not recorded: {message}",
    org_title: "Organization",
    org_intro: "A Microsoft 365 administrator consents once and the CRM turns the sync on for each user by mailbox, without their sign-in.",
    org_state: "Organization state", org_mode: "User's mode", btn_org_connect: "Connect organization",
    org_mailbox: "User's mailbox (address or id)", btn_enable: "Enable user",
    org_never_connected: "Not connected", org_connected: "Connected", org_consent_required: "Consent missing",
    org_disconnected: "Disconnected", mode_delegated: "Own sign-in", mode_organization: "By the organization",
    org_opening: "Opening Microsoft's administrator consent…", org_enabling: "Enabling the user…",
    org_back_connected: "Organization connected. You can enable users now.", org_back_error: "The organization was not connected ({reason}).",
    state_access_denied: "Outside what the administrator allowed", state_mailbox_not_found: "The mailbox does not exist",
    state_organization_consent_required: "The organization's consent is missing",
  },
};
const TYPE_NAMES = {
  en: { call: "Call", meeting: "Meeting", task: "Task", email: "Email", note: "Note" },
};

const ui = {
  lang: localStorage.getItem("console.lang") === "en" ? "en" : "es",
  view: localStorage.getItem("console.view") === "week" ? "week" : "day",
  date: todayIso(),
  crm: null, status: null, outlook: null,
  syncJob: null, syncMessage: null,
  busy: false, again: false,
  formMessage: null, calendarMessage: null, calendars: null, calendarsAsked: false,
  settings: null, dirMessage: null, meetingMessage: null,
};
const DIRECTION_FIELDS = ["subject", "description", "location", "times", "reminder"];

const $ = (id) => document.getElementById(id);

function t(key, vars) {
  let text = TEXT[ui.lang][key] ?? TEXT.es[key] ?? key;
  for (const [name, value] of Object.entries(vars || {})) text = text.replaceAll(`{${name}}`, String(value));
  return text;
}

function todayIso() {
  const now = new Date();
  return new Date(now.getTime() - now.getTimezoneOffset() * 60000).toISOString().slice(0, 10);
}

function addDays(iso, days) {
  const d = new Date(`${iso}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + days);
  return d.toISOString().slice(0, 10);
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "style") node.setAttribute("style", value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const answer = await fetch(path, options);
  return answer.json();
}

function serviceMessage(answer) {
  if (!answer || answer.status === 0) return t("unreachable");
  const body = answer.body || {};
  let message = body.message || body.error || JSON.stringify(body);
  if (Array.isArray(body.fields)) message += " — " + body.fields.map((f) => `${f.field}: ${f.message}`).join("; ");
  return t("service_error", { status: answer.status, message });
}

function formatInstant(iso) {
  if (!iso) return "—";
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return iso;
  return when.toLocaleString(ui.lang === "es" ? "es-CO" : "en-US", { dateStyle: "medium", timeStyle: "short" });
}

function typeName(type) {
  return (TYPE_NAMES[ui.lang] || {})[type.id] || type.name;
}

// --- language ------------------------------------------------------------------------------------------

function applyLanguage() {
  document.documentElement.lang = ui.lang;
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  $("lang-toggle").textContent = t("lang_other");
  document.title = `${t("brand")} — ${t("crumb_calendars")}`;
  fillTypes();
  render();
  renderDirections();
  showMessages();
}

// --- the form ------------------------------------------------------------------------------------------

function fillTypes() {
  if (!ui.crm) return;
  const select = $("f-type");
  const chosen = select.value;
  select.replaceChildren(...ui.crm.types.map((type) => el("option", { value: type.id },
    `${typeName(type)} — ${type.show_in_calendar ? t("type_calendar") : t("type_no_calendar")}`)));
  if (chosen) select.value = chosen;
}

function fillZones() {
  const select = $("f-zone");
  if (select.options.length) return;
  select.replaceChildren(...ui.crm.zones.map((zone) => el("option", { value: zone }, zone)));
  select.value = ui.crm.crm_time_zone;
}

function formDefaults() {
  const today = todayIso();
  $("f-start-date").value = today;
  $("f-end-date").value = today;
  $("f-start-time").value = "09:00";
  $("f-end-time").value = "09:30";
}

function toggleAllDay() {
  const allDay = $("f-all-day").checked;
  for (const node of document.querySelectorAll("#activity-form .timed")) node.hidden = allDay;
}

async function saveActivity(event) {
  event.preventDefault();
  const form = $("activity-form");
  const data = Object.fromEntries(new FormData(form).entries());
  data.all_day = $("f-all-day").checked;
  data.show_in_calendar = $("f-show").checked;
  tellForm(() => "…", "");
  const answer = await api("/crm/api/activities", data);
  if (answer.status === 400) {
    tellForm(() => t("saved_error", { fields: (answer.body.fields || []).map((f) => `${f.field}: ${f.message}`).join("; ") }), "error");
  } else if (answer.body && answer.body.service && !answer.body.pushed) {
    tellForm(() => t("push_error", { status: answer.body.service.status, message: serviceMessage(answer.body.service) }), "error");
  } else {
    tellForm(() => (answer.body.pushed ? t("saved_pushed") : t("saved_local")), "ok");
    $("f-subject").value = "";
  }
  await refresh();
}

// --- the Microsoft calendar panel --------------------------------------------------------------------

// Messages are kept as functions, so the language toggle re-renders them in the other language.
function tellForm(make, kind) {
  ui.formMessage = { make, kind };
  showMessages();
}

function say(make, kind, detail) {
  ui.calendarMessage = { make, kind, detail };
  showMessages();
}

function showMessages() {
  const text = (value) => (typeof value === "function" ? value() : value || "");
  if (ui.formMessage) {
    $("form-message").className = `message ${ui.formMessage.kind || ""}`;
    $("form-message").textContent = text(ui.formMessage.make);
  }
  if (ui.calendarMessage) {
    $("calendar-message").className = `message ${ui.calendarMessage.kind || ""}`;
    $("calendar-message").textContent = text(ui.calendarMessage.make);
    $("calendar-detail").textContent = text(ui.calendarMessage.detail);
  }
}

async function connect() {
  say(() => t("connecting"));
  const answer = await api("/crm/api/connect", { locale: ui.lang, login_hint: $("login-hint").value.trim() });
  if (answer.status === 200 && answer.body.start_url) {
    window.location.assign(answer.body.start_url);
  } else {
    say(() => serviceMessage(answer), "error");
  }
}

async function sync() {
  $("btn-sync").disabled = true;
  const answer = await api("/crm/api/sync", {});
  if (answer.status === 202) {
    ui.syncJob = answer.body.job_id || null;
    say(() => t("sync_started", { n: answer.sent }), "");
  } else if (answer.status === 200) {
    say(() => t("sync_dry"), "ok");
  } else if (answer.status === 404 || answer.status === 405) {
    say(() => t("sync_missing", { status: answer.status, message: (answer.body && answer.body.message) || "not found" }), "error");
  } else {
    say(() => serviceMessage(answer), "error");
  }
  await refresh();
}

async function disconnect() {
  $("btn-disconnect").disabled = true;
  const answer = await api("/crm/api/disconnect", { remove_events: $("remove-events").value });
  if (answer.status === 200) {
    ui.syncJob = null;
    // The events are removed by a job; connection.disconnected (with events_removed) says when it is done.
    const removal = answer.body.removal;
    say(answer.body.message, "ok", () => (removal ? t("removing", { n: removal.total }) : ""));
  } else {
    say(() => serviceMessage(answer), "error");
  }
  await refresh();
}

// The calendar picker: the service's signed GET .../calendars and PUT .../calendar, through the console's server.
function choiceValue(calendar, inUse) {
  if (inUse && inUse.choice === "dedicated" && calendar.id === inUse.id) return "dedicated";
  return calendar.is_default ? "default" : `id:${calendar.id}`;
}

async function loadCalendars() {
  const answer = await api("/crm/api/calendars");
  ui.calendars = answer.status === 200 ? answer.body : null;
  renderCalendars();
}

function renderCalendars() {
  const select = $("calendar-select");
  const list = ui.calendars;
  const connected = ui.status && ui.status.body && ui.status.body.state === "connected";
  select.disabled = !(connected && list);
  $("btn-calendar").disabled = select.disabled;
  if (!list) {
    select.replaceChildren();
    $("calendar-in-use").textContent = "";
    return;
  }
  const inUse = list.calendar || {};
  const options = list.calendars.map((c) => el("option", { value: choiceValue(c, inUse), "data-colour": c.colour || "" },
    c.is_default ? t("cal_default", { name: c.name }) : c.name));
  if (!options.some((o) => o.value === "dedicated")) options.push(el("option", { value: "dedicated" }, t("cal_dedicated")));
  const current = list.calendars.find((c) => c.in_use);
  const keep = select.value;
  select.replaceChildren(...options);
  select.value = keep && options.some((o) => o.value === keep) ? keep : (current ? choiceValue(current, inUse) : "default");
  const move = ui.status && ui.status.body && ui.status.body.calendar && ui.status.body.calendar.move;
  $("calendar-in-use").textContent = move && move.state !== "done" && move.total !== undefined
    ? t("cal_moving", { moved: move.moved ?? 0, total: move.total })
    : current ? t("cal_in_use", { name: current.name }) : "";
}

async function switchCalendar() {
  const value = $("calendar-select").value;
  const calendar = value.startsWith("id:") ? { id: value.slice(3) } : value;
  $("btn-calendar").disabled = true;
  const answer = await api("/crm/api/calendar", { calendar });
  if (answer.status === 202) say(() => t("cal_switched"), "ok");
  else if (answer.status === 200) say(() => t("cal_same"), "ok");
  else say(() => serviceMessage(answer), "error");
  $("calendar-select").value = "";
  await loadCalendars();
  await refresh();
}

function showReturn() {
  const params = new URLSearchParams(window.location.search);
  const organization = params.get("organization_sync");
  if (organization) {  // back from Microsoft's administrator consent (issue 19)
    const reason = params.get("reason") || "error";
    orgSay(() => (organization === "connected" ? t("org_back_connected") : t("org_back_error", { reason })),
      organization === "connected" ? "ok" : "error");
    history.replaceState(null, "", "/");
    return;
  }
  const outcome = params.get("calendar_sync");
  if (!outcome) return;
  const banner = $("banner");
  if (outcome === "connected") {
    banner.className = "banner ok";
    banner.textContent = t("banner_connected");
  } else {
    const reason = params.get("reason") || "error";
    banner.className = "banner error";
    banner.textContent = t("banner_error", { reason: TEXT[ui.lang][`reason_${reason}`] || reason });
  }
  banner.hidden = false;
  banner.dataset.outcome = outcome;
  history.replaceState(null, "", "/");
}

// --- rendering ---------------------------------------------------------------------------------------

function render() {
  renderActivities();
  renderMeetings();
  renderStatus();
  renderCallbacks();
  renderOutlook();
  renderCalendars();
  renderOrganization();
}

// --- organisation mode (issue 19) ------------------------------------------------------------------------

function orgSay(make, kind) {
  ui.orgMessage = { make, kind };
  $("org-message").className = `message ${kind || ""}`;
  $("org-message").textContent = make();
}

function renderOrganization() {
  const org = ui.organization && ui.organization.status === 200 ? ui.organization.body : null;
  $("org-state").textContent = org ? t(`org_${org.state}`) : "—";
  const body = ui.status && ui.status.status === 200 ? ui.status.body : null;
  $("org-user-mode").textContent = body && body.state !== "never_connected" && body.mode ? t(`mode_${body.mode}`) : "—";
  $("btn-enable").disabled = !(org && org.state === "connected");
  if (ui.orgEnabling && body && body.mode === "organization" && body.state !== "never_connected") {
    ui.orgEnabling = false;  // the worker answered: the status panel shows how
    ui.orgMessage = null;
    $("org-message").textContent = "";
  }
  if (ui.orgMessage) orgSay(ui.orgMessage.make, ui.orgMessage.kind);
}

async function connectOrganization() {
  orgSay(() => t("org_opening"), "");
  const answer = await api("/crm/api/organization/connect", { locale: ui.lang });
  if (answer.status === 200 && answer.body.consent_url) {
    window.location.assign(answer.body.consent_url);
  } else {
    orgSay(() => serviceMessage(answer), "error");
  }
}

async function enableUser() {
  const mailbox = $("org-mailbox").value.trim();
  if (!mailbox) return;
  orgSay(() => t("org_enabling"), "");
  ui.orgEnabling = true;
  const answer = await api("/crm/api/enable", { mailbox, locale: ui.lang });
  if (answer.status !== 202) orgSay(() => serviceMessage(answer), "error");
  refresh();
}

function outlookCell(record) {
  const activity = record.payload;
  const outcome = record.outlook;
  if (outcome) {
    if (outcome.type === "activity.synced" && outcome.outlook_event_id) {
      const teams = outcome.online_meeting_url
        ? [" ", el("a", { href: outcome.online_meeting_url, target: "_blank", rel: "noopener", "data-testid": "teams-link" }, t("out_teams"))]
        : outcome.online_meeting === "unavailable" ? [" ", el("span", { class: "muted" }, t("out_no_teams"))] : null;
      return el("span", { class: "badge ok" }, t("out_synced"),
        outcome.web_link ? [" ", el("a", { href: outcome.web_link, target: "_blank", rel: "noopener" }, t("out_open"))] : null, teams);
    }
    if (outcome.type === "activity.synced") return el("span", { class: "badge" }, t("out_removed"));
    if (outcome.type === "activity.sync_failed") {
      return el("span", { class: "badge error" }, t("out_failed", { message: (outcome.error || {}).message || "" }));
    }
    if (outcome.type === "activity.deleted_in_outlook") return el("span", { class: "badge warn" }, t("out_deleted"));
    if (outcome.type === "activity.changed_in_outlook") return el("span", { class: "badge warn" }, t("out_changed"));
    if (outcome.type === "connection.disconnected") return el("span", { class: "badge muted" }, t("out_disconnected"));
    if (outcome.type === "backfill.completed" && eligible(activity)) {
      // Sincronizar reports per job, not per activity: all done, or some failed (see the status panel).
      return outcome.failed ? el("span", { class: "badge warn" }, t("out_backfill_failed"))
        : el("span", { class: "badge ok" }, t("out_backfilled"));
    }
  }
  if (!eligible(activity)) {
    return el("span", { class: "badge muted" }, t("out_no_calendar"));
  }
  if (record.pushed === null && !record.backfill_job) return el("span", { class: "badge muted" }, t("out_pending"));
  return el("span", { class: "badge" }, t("out_sent"));
}

function eligible(activity) {
  return activity.type.show_in_calendar && activity.show_in_calendar !== false && activity.status === "planned";
}

function whenText(activity) {
  if (activity.all_day) {
    const last = addDays(activity.end, -1);
    return last === activity.start ? `${activity.start} · ${t("f_all_day")}` : `${activity.start} → ${last} · ${t("f_all_day")}`;
  }
  const [day, time] = activity.start.split("T");
  const [, endTime] = activity.end.split("T");
  return `${day} ${time.slice(0, 5)}–${endTime.slice(0, 5)} (${activity.time_zone})`;
}

function editNote(record) {
  const edit = record.outlook_edit;
  if (!edit || !edit.fields.length) return null;
  const names = edit.fields.map((f) => t(`fld_${f}`)).join(", ");
  const detail = edit.fields.map((f) => `${t(`fld_${f}`)}: ${JSON.stringify(edit.changes[f].from)} → ${JSON.stringify(edit.changes[f].to)}`).join("\n");
  return el("div", { class: "edit-note", "data-testid": "outlook-edit", title: detail },
    t("edit_note", { fields: names }), edit.conflict ? ` — ${t("edit_conflict")}` : "");
}

// --- meetings captured from Outlook (outlook_event.* callbacks) ----------------------------------------

function meetingWhen(data) {
  if (data.all_day) {
    const last = addDays(data.end_local.slice(0, 10), -1);
    const first = data.start_local.slice(0, 10);
    return last <= first ? `${first} · ${t("f_all_day")}` : `${first} → ${last} · ${t("f_all_day")}`;
  }
  const [day, time] = data.start_local.split("T");
  const [endDay, endTime] = data.end_local.split("T");
  const end = endDay === day ? endTime.slice(0, 5) : `${endDay} ${endTime.slice(0, 5)}`;
  return `${day} ${time.slice(0, 5)}–${end} (${data.time_zone})`;
}

function meetingPeople(data) {
  const organizer = data.organizer && data.organizer.address;
  const people = organizer ? [el("span", { class: "address organizer", title: t("mt_organizer") }, organizer)] : [];
  for (const person of data.attendees || []) {
    if (person.address && person.address !== organizer) people.push(el("span", { class: "address" }, person.address));
  }
  return people.length ? people : "—";
}

function meetingCrmCell(meeting) {
  if (meeting.activity_id) {
    const record = (ui.crm.activities || []).find((a) => a.payload.id === meeting.activity_id);
    return [el("span", { class: "badge ok", "data-testid": "meeting-recorded" }, t("mt_recorded"), " ",
      el("a", { href: `#activity-${meeting.activity_id}` }, meeting.activity_id)),
    record ? el("div", {}, outlookCell(record)) : null];
  }
  if (meeting.activity_id === "") return el("span", { class: "badge" }, t("mt_recording"));
  return el("button", { type: "button", "data-testid": "adopt-meeting", disabled: meeting.cancelled || meeting.gone,
    "data-event-id": meeting.outlook_event_id }, t("mt_adopt"));
}

function renderMeetings() {
  if (!ui.crm) return;
  const rows = (ui.crm.meetings || []).map((meeting) => {
    const data = meeting.data;
    const flags = [meeting.cancelled ? el("span", { class: "badge warn" }, t("mt_cancelled")) : null,
      meeting.gone ? el("span", { class: "badge warn" }, t("mt_gone")) : null];
    return el("tr", { "data-testid": "meeting-row", "data-event-id": meeting.outlook_event_id },
      el("td", {}, el("div", {}, data.subject || "—"), data.location ? el("div", { class: "muted" }, data.location) : null, flags),
      el("td", { "data-testid": "meeting-when" }, meetingWhen(data)),
      el("td", { "data-testid": "meeting-attendees" }, meetingPeople(data)),
      el("td", { "data-testid": "meeting-crm" }, meetingCrmCell(meeting)));
  });
  $("meeting-rows").replaceChildren(...rows);
  $("no-meetings").hidden = rows.length > 0;
  const message = ui.meetingMessage;
  $("meeting-message").className = `message ${message ? message.kind : ""}`;
  $("meeting-message").textContent = message ? message.make() : "";
}

async function adoptMeeting(event) {
  const button = event.target.closest("button[data-testid='adopt-meeting']");
  if (!button) return;
  button.disabled = true;
  const answer = await api("/crm/api/meetings/adopt", { outlook_event_id: button.dataset.eventId });
  const body = answer.body || {};
  if (answer.status === 201 && body.pushed) {
    ui.meetingMessage = { make: () => t("mt_adopted", { id: body.activity.id }), kind: "ok" };
  } else if (answer.status === 201) {
    ui.meetingMessage = { make: () => t("mt_adopted", { id: body.activity.id }) + " " + t("saved_local"), kind: "" };
  } else {
    const detail = body.service ? serviceMessage(body.service) : body.message || JSON.stringify(body);
    ui.meetingMessage = { make: () => t("mt_error", { message: detail }), kind: "error" };
  }
  await refresh();
}

// --- field directions (the tenant's settings) --------------------------------------------------------

async function loadSettings() {
  const answer = await api("/crm/api/settings");
  if (answer.status === 200) ui.settings = answer.body;
  renderDirections();
}

function renderDirections() {
  const directions = (ui.settings && ui.settings.field_directions) || {};
  $("directions").replaceChildren(...DIRECTION_FIELDS.map((field) => el("tr", {},
    el("th", {}, el("label", { for: `dir-${field}` }, t(`dir_${field}`))),
    el("td", {}, (() => {
      const select = el("select", { id: `dir-${field}`, name: field, "data-field": field },
        ["two_way", "crm_to_outlook"].map((d) => el("option", { value: d }, t(`dir_${d}`))));
      select.value = directions[field] || (field === "times" ? "two_way" : "crm_to_outlook");
      return select;
    })()))));
  $("capture-meetings").value = (ui.settings && ui.settings.capture_meetings) || "off";
  const message = ui.dirMessage;
  $("dir-message").className = `message ${message ? message.kind : ""}`;
  $("dir-message").textContent = message ? (typeof message.make === "function" ? message.make() : message.make) : "";
}

async function saveDirections(event) {
  event.preventDefault();
  const chosen = Object.fromEntries(DIRECTION_FIELDS.map((f) => [f, $(`dir-${f}`).value]));
  const answer = await api("/crm/api/settings", { field_directions: chosen, capture_meetings: $("capture-meetings").value });
  if (answer.status === 200) {
    ui.settings = answer.body;
    ui.dirMessage = { make: () => t("dir_saved"), kind: "ok" };
  } else {
    ui.dirMessage = { make: () => serviceMessage(answer), kind: "error" };
  }
  renderDirections();
}

function renderActivities() {
  if (!ui.crm) return;
  const rows = ui.crm.activities.map((record) => {
    const a = record.payload;
    const related = [["f_deal", a.deal], ["f_company", a.company], ["f_contact", a.contact]]
      .filter(([, party]) => party)
      .map(([key, party]) => el("div", {}, el("span", { class: "muted" }, `${t(key)}: `), party.name));
    return el("tr", { "data-testid": "activity-row", "data-activity-id": a.id, id: `activity-${a.id}` },
      el("td", {}, a.subject),
      el("td", {}, el("div", {}, typeName(a.type)), el("span", { class: a.type.show_in_calendar ? "flag on" : "flag off" },
        a.type.show_in_calendar ? t("type_calendar") : t("type_no_calendar"))),
      el("td", {}, t(`st_${a.status}`)),
      el("td", {}, whenText(a)),
      el("td", {}, related.length ? related : "—"),
      el("td", { "data-testid": "activity-outlook" }, outlookCell(record), editNote(record)));
  });
  $("activity-rows").replaceChildren(...rows);
  $("no-activities").hidden = rows.length > 0;
}

function renderStatus() {
  const answer = ui.status;
  const body = answer && answer.status === 200 ? answer.body : null;
  const state = body ? body.state : "unknown";
  const stateNode = $("s-state");
  stateNode.textContent = t(`state_${state}`);
  stateNode.dataset.state = state;
  stateNode.className = `state ${state}`;
  if (!body && answer) stateNode.title = serviceMessage(answer);
  $("s-account").textContent = (body && body.account) || "—";
  $("s-crm-zone").textContent = (body && body.crm_time_zone) || (ui.crm ? ui.crm.crm_time_zone : "—");
  $("s-mailbox-zone").textContent = (body && body.mailbox_time_zone) || "—";
  const counts = (body && body.counts) || {};
  $("s-counts").textContent = body ? t("counts", { synced: counts.synced ?? 0, pending: counts.pending ?? 0, failed: counts.failed ?? 0 }) : "—";
  const backfill = body && body.backfill;
  $("s-backfill").textContent = backfill ? `${t(`bf_${backfill.state}`)} · ${backfill.done}/${backfill.received}` : "—";
  $("s-last-sync").textContent = formatInstant(body && body.last_sync_at);
  $("s-subscription").textContent = formatInstant(body && body.subscription_expires_at);
  const errors = (body && body.recent_errors) || [];
  $("s-errors").replaceChildren(...(errors.length
    ? errors.map((e) => el("li", {}, el("b", {}, e.kind), ` ${formatInstant(e.at)} — ${e.message}`))
    : [el("li", { class: "muted" }, t("no_errors"))]));
  const connected = state === "connected";
  const banner = $("banner");
  if (!banner.hidden && banner.dataset.outcome === "connected" && body && !connected) banner.hidden = true;
  $("btn-sync").disabled = !connected;
  $("btn-disconnect").disabled = !(connected || state === "reauth_required");
  if (ui.syncJob && ui.crm) {
    const done = ui.crm.callbacks.find((c) => c.type === "backfill.completed" && (!c.data.job_id || c.data.job_id === ui.syncJob));
    if (done) {
      say(() => t("sync_done", done.data), "ok");
      ui.syncJob = null;
    }
  }
}

function callbackSummary(callback) {
  const d = callback.data || {};
  if (d.activity_id) return `${d.activity_id}${d.version ? ` v${d.version}` : ""}${d.error ? ` — ${d.error.message}` : ""}`;
  if (callback.type === "backfill.completed") return t("sync_done", d);
  if (d.account) return `${d.account} · ${d.mailbox_time_zone || ""}`;
  if (d.events_removed !== undefined) return t("events_removed", { n: d.events_removed });
  return "";
}

function renderCallbacks() {
  if (!ui.crm) return;
  const items = ui.crm.callbacks.slice(0, 30).map((c) => el("li", { "data-type": c.type },
    el("time", {}, formatInstant(c.received_at)), " ", el("code", {}, c.type), " ", callbackSummary(c),
    " ", el("span", { class: "verified", title: t("cb_verified") }, "✔")));
  $("callbacks").replaceChildren(...(items.length ? items : [el("li", { class: "muted" }, t("cb_none"))]));
  $("cb-rejected").textContent = ui.crm.rejected_callbacks ? t("cb_rejected", { n: ui.crm.rejected_callbacks }) : "";
}

// --- the Outlook view ----------------------------------------------------------------------------------

const HOUR_PX = 44;

function dayLabel(iso) {
  const d = new Date(`${iso}T12:00:00Z`);
  return d.toLocaleDateString(ui.lang === "es" ? "es-ES" : "en-GB", { weekday: "short", day: "numeric", month: "short", timeZone: "UTC" });
}

function lanes(events) {
  // Overlapping events share the column side by side, as Outlook does.
  const sorted = [...events].sort((a, b) => a.start_minute - b.start_minute || b.end_minute - a.end_minute);
  const ends = [];
  for (const event of sorted) {
    let lane = ends.findIndex((end) => end <= event.start_minute);
    if (lane < 0) { lane = ends.length; ends.push(0); }
    ends[lane] = Math.max(event.end_minute, event.start_minute + 15);
    event.lane = lane;
  }
  for (const event of sorted) event.lanes = ends.length;
  return sorted;
}

function colourStyle(event) {
  // Each calendar in its own colour, as Outlook shows them: a solid edge and a light fill.
  return /^#[0-9a-fA-F]{6}$/.test(event.colour || "") ? `border-left-color:${event.colour};background:${event.colour}29` : "";
}

function renderOutlook() {
  $("view-day").classList.toggle("active", ui.view === "day");
  $("view-week").classList.toggle("active", ui.view === "week");
  $("ol-date").value = ui.date;
  const grid = $("ol-grid");
  const data = ui.outlook;
  if (!data) return;
  if (!data.available) {
    $("ol-mailbox").textContent = "";
    $("ol-zone").textContent = "";
    grid.replaceChildren(el("p", { class: "muted" }, t("ol_unavailable")));
    return;
  }
  if (data.error) {
    grid.replaceChildren(el("p", { class: "message error" }, data.error));
    return;
  }
  $("ol-mailbox").textContent = t("ol_mailbox", { name: data.display_name, account: data.account });
  $("ol-zone").textContent = t("ol_zone", { zone: data.time_zone, iana: data.iana_zone });
  const days = Array.from({ length: data.days }, (_, i) => addDays(data.first_day, i));
  const timed = data.events.filter((e) => !e.all_day);
  let firstHour = 8;
  let lastHour = 18;
  for (const e of timed) {
    firstHour = Math.min(firstHour, Math.floor(e.start_minute / 60));
    lastHour = Math.max(lastHour, Math.ceil(Math.max(e.end_minute, e.start_minute + 30) / 60));
  }
  lastHour = Math.min(lastHour, 24);
  const height = (lastHour - firstHour) * HOUR_PX;
  const columns = `56px repeat(${days.length}, minmax(0, 1fr))`;
  const today = todayIso();

  const head = el("div", { class: "ol-row ol-head-row", style: `grid-template-columns:${columns}` }, el("div"),
    days.map((d) => el("div", { class: d === today ? "ol-day-name today" : "ol-day-name" }, dayLabel(d))));
  const allDay = el("div", { class: "ol-row ol-all-day", style: `grid-template-columns:${columns}` },
    el("div", { class: "ol-hour" }, t("ol_all_day")),
    days.map((d) => el("div", { class: "ol-all-day-cell" },
      data.events.filter((e) => e.all_day && e.first_day <= d && d <= e.last_day).map((e) =>
        el("div", { class: e.ours ? "ol-event all-day ours" : "ol-event all-day", "data-testid": "outlook-event",
          "data-day": d, "data-all-day": "true", "data-calendar": e.calendar, "data-colour": e.colour,
          style: colourStyle(e), title: [e.calendar, e.preview].filter(Boolean).join("\n") },
        el("span", { class: "subject" }, e.subject))))));
  const hours = el("div", { class: "ol-hours", style: `height:${height}px` },
    Array.from({ length: lastHour - firstHour }, (_, i) => el("div", { class: "ol-hour", style: `height:${HOUR_PX}px` },
      `${String(firstHour + i).padStart(2, "0")}:00`)));
  const body = el("div", { class: "ol-row ol-body", style: `grid-template-columns:${columns}` }, hours,
    days.map((d) => el("div", { class: "ol-col", style: `height:${height}px;background-size:100% ${HOUR_PX}px`, "data-day": d },
      lanes(timed.filter((e) => e.day === d)).map((e) => {
        const top = ((e.start_minute - firstHour * 60) / 60) * HOUR_PX;
        const tall = Math.max(((e.end_minute - e.start_minute) / 60) * HOUR_PX, 20);
        const width = 100 / e.lanes;
        return el("div", {
          class: e.ours ? "ol-event ours" : "ol-event", "data-testid": "outlook-event", "data-day": d,
          "data-start": e.start_local, "data-end": e.end_local, "data-calendar": e.calendar, "data-colour": e.colour,
          style: `top:${top}px;height:${tall}px;left:calc(${e.lane * width}% + 2px);width:calc(${width}% - 4px);${colourStyle(e)}`,
          title: [e.subject, e.calendar, e.location, e.preview].filter(Boolean).join("\n"),
        }, el("span", { class: "time" }, `${e.start_label} – ${e.end_label}`), " ",
        el("span", { class: "subject" }, e.subject), e.location ? el("span", { class: "where" }, e.location) : null,
        e.join_url ? el("a", { class: "where", href: e.join_url, target: "_blank", rel: "noopener" }, t("out_teams")) : null);
      }))));
  grid.replaceChildren(head, allDay, body);
  grid.dataset.firstDay = data.first_day; // what the view shows, for whoever waits for it (the browser test)
  grid.dataset.days = String(data.days);
}

// --- refresh loop --------------------------------------------------------------------------------------

async function refresh() {
  if (ui.busy) {
    ui.again = true; // run once more when the one in flight ends, so a new date or view shows at once
    return;
  }
  ui.busy = true;
  ui.again = false;
  try {
    const days = ui.view === "week" ? 7 : 1;
    const asked = `${ui.date}/${ui.view}`;
    const [crm, status, outlook, organization] = await Promise.all([
      api("/crm/api/state"), api("/crm/api/status"), api(`/crm/api/outlook?date=${ui.date}&days=${days}`),
      api("/crm/api/organization"),
    ]);
    ui.organization = organization;
    const first = !ui.crm;
    ui.crm = crm;
    ui.status = status;
    if (asked === `${ui.date}/${ui.view}`) ui.outlook = outlook;
    else ui.again = true;
    // The calendar list costs the service a Graph request: read once per connection, and after a switch.
    const connectedNow = status && status.body && status.body.state === "connected";
    if (connectedNow && !ui.calendarsAsked) {
      ui.calendarsAsked = true;
      loadCalendars();
    } else if (!connectedNow) {
      ui.calendarsAsked = false;
      ui.calendars = null;
    }
    if (first) {
      $("who-name").textContent = crm.user_name;
      $("who-zone").textContent = crm.crm_time_zone;
      if (!$("login-hint").value) $("login-hint").value = crm.upn;
      if (!$("org-mailbox").value) $("org-mailbox").value = crm.upn;
      fillTypes();
      fillZones();
    }
    render();
  } catch (error) {
    say(() => t("unreachable"), "error", String(error));
  } finally {
    ui.busy = false;
    if (ui.again) refresh();
  }
}

function setView(view) {
  ui.view = view;
  localStorage.setItem("console.view", view);
  $("view-day").classList.toggle("active", view === "day");
  $("view-week").classList.toggle("active", view === "week");
  refresh();
}

function moveDate(days) {
  ui.date = addDays(ui.date, days);
  refresh();
}

function init() {
  formDefaults();
  showReturn();
  $("lang-toggle").addEventListener("click", () => {
    ui.lang = ui.lang === "es" ? "en" : "es";
    localStorage.setItem("console.lang", ui.lang);
    applyLanguage();
  });
  $("activity-form").addEventListener("submit", saveActivity);
  $("directions-form").addEventListener("submit", saveDirections);
  $("meeting-rows").addEventListener("click", adoptMeeting);
  $("f-all-day").addEventListener("change", toggleAllDay);
  $("f-start-date").addEventListener("change", () => {
    if ($("f-end-date").value < $("f-start-date").value) $("f-end-date").value = $("f-start-date").value;
  });
  $("btn-connect").addEventListener("click", connect);
  $("btn-sync").addEventListener("click", sync);
  $("btn-disconnect").addEventListener("click", disconnect);
  $("btn-calendar").addEventListener("click", switchCalendar);
  $("btn-org-connect").addEventListener("click", connectOrganization);
  $("btn-enable").addEventListener("click", enableUser);
  $("view-day").addEventListener("click", () => setView("day"));
  $("view-week").addEventListener("click", () => setView("week"));
  $("ol-prev").addEventListener("click", () => moveDate(ui.view === "week" ? -7 : -1));
  $("ol-next").addEventListener("click", () => moveDate(ui.view === "week" ? 7 : 1));
  $("ol-today").addEventListener("click", () => { ui.date = todayIso(); refresh(); });
  $("ol-date").addEventListener("change", () => {
    if ($("ol-date").value) { ui.date = $("ol-date").value; refresh(); }
  });
  applyLanguage();
  refresh();
  loadSettings();
  setInterval(refresh, 1500);
}

init();
