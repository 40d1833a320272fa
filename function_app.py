"""The composition root: one FunctionApp and the blueprints of every surface. Nothing else.

Settings are validated here, once, so a missing or malformed one stops the host at start with a
message naming it. Everything heavier (SDK clients, MSAL) is built lazily on first use.
"""

import azure.functions as func

from functions import (
    activity_worker,
    auth,
    backfill,
    calendars,
    callbacks_worker,
    crm_api,
    crm_events,
    graph_webhooks,
    health,
    organization,
    reconcile_worker,
    removal_worker,
    tenant_settings,
    timers,
)
from shared.rules import settings

settings.get()

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_functions(health.bp)
app.register_functions(crm_api.bp)
app.register_functions(auth.bp)
app.register_functions(graph_webhooks.bp)
app.register_functions(callbacks_worker.bp)
app.register_functions(timers.bp)
app.register_functions(crm_events.bp)
app.register_functions(activity_worker.bp)
app.register_functions(backfill.bp)
app.register_functions(reconcile_worker.bp)
app.register_functions(tenant_settings.bp)
app.register_functions(calendars.bp)
app.register_functions(removal_worker.bp)
app.register_functions(organization.bp)
