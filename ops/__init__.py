"""``python -m ops``: the operator's tools named in RUNBOOK.md.

Talks to the service's storage directly (queues, tables: ``AzureWebJobsStorage`` or its
identity-based ``__accountName``/``__queueServiceUri``/``__tableServiceUri`` form) and to the service
itself only through the signed CRM contract (``CRM_SHARED_SECRET``, ``SERVICE_URL``), so a change it
makes goes through the same rules as the CRM's. It imports no flow and no trigger."""
