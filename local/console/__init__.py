"""A page standing in for the CRM, for ``make run`` and the browser test (local only, never deployed).

It talks to the service only through the signed CRM contract (design §3) and reads the emulated
Outlook calendar through the Graph emulator's control API. See ``local/console/README.md``."""
