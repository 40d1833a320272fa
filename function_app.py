"""The composition root: one FunctionApp and the blueprints of every surface. Nothing else.

Settings are validated here, once, so a missing or malformed one stops the host at start with a
message naming it. Everything heavier (SDK clients, MSAL) is built lazily on first use.
"""

import azure.functions as func

from functions import health
from shared import settings

settings.get()

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_functions(health.bp)
