"""Table and Queue Storage clients, built lazily from the host's own storage settings and reused.

Locally the settings hold Azurite's connection string; in Azure they name the account endpoints
and a user-assigned managed identity (no keys). The Azure SDKs are imported on first use only,
so importing this module costs nothing at cold start.

Queue messages are base64-encoded, as the Functions host's queue trigger expects by default.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from shared.rules.settings import StorageSettings

if TYPE_CHECKING:
    from azure.data.tables import TableClient, TableServiceClient
    from azure.storage.queue import QueueClient, QueueServiceClient


class Storage:
    """Clients for one storage account; each table and queue is created (if missing) on first use."""

    def __init__(self, config: StorageSettings) -> None:
        self.config = config
        self._tables: TableServiceClient | None = None
        self._queues: QueueServiceClient | None = None
        self._clients: dict[tuple[str, str], TableClient | QueueClient] = {}
        self._lock = threading.Lock()

    @property
    def table_service(self) -> TableServiceClient:
        if self._tables is None:
            from azure.data.tables import TableServiceClient

            if self.config.connection_string:
                self._tables = TableServiceClient.from_connection_string(self.config.connection_string)
            else:
                self._tables = TableServiceClient(
                    endpoint=self.config.table_url, credential=_credential(self.config)
                )
        return self._tables

    @property
    def queue_service(self) -> QueueServiceClient:
        if self._queues is None:
            from azure.storage.queue import QueueServiceClient

            if self.config.connection_string:
                self._queues = QueueServiceClient.from_connection_string(self.config.connection_string)
            else:
                self._queues = QueueServiceClient(
                    account_url=self.config.queue_url, credential=_credential(self.config)
                )
        return self._queues

    def table(self, name: str) -> TableClient:
        client = self._clients.get(("table", name))
        if client is None:
            self.table_service.create_table_if_not_exists(name)
            client = self._remember(("table", name), self.table_service.get_table_client(name))
        return client

    def queue(self, name: str) -> QueueClient:
        client = self._clients.get(("queue", name))
        if client is None:
            from azure.core.exceptions import ResourceExistsError
            from azure.storage.queue import BinaryBase64DecodePolicy, BinaryBase64EncodePolicy

            client = self.queue_service.get_queue_client(
                name,
                message_encode_policy=BinaryBase64EncodePolicy(),
                message_decode_policy=BinaryBase64DecodePolicy(),
            )
            try:
                client.create_queue()
            except ResourceExistsError:
                pass
            client = self._remember(("queue", name), client)
        return client

    def _remember(self, key: tuple[str, str], client):
        with self._lock:
            return self._clients.setdefault(key, client)

    def send(self, queue_name: str, body: str | bytes, *, delay_seconds: int = 0) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.queue(queue_name).send_message(data, visibility_timeout=delay_seconds or None)

    def check(self) -> dict[str, str]:
        """Reachability of both services, for the health endpoint."""
        result = {}
        for name, probe in (
            ("tables", lambda: next(iter(self.table_service.list_tables(results_per_page=1)), None)),
            ("queues", lambda: next(iter(self.queue_service.list_queues(results_per_page=1)), None)),
        ):
            try:
                probe()
                result[name] = "ok"
            except Exception as error:  # noqa: BLE001 - health reports any failure by type, never raises
                result[name] = f"unreachable: {type(error).__name__}"
        return result


def _credential(config: StorageSettings):
    from azure.identity import ManagedIdentityCredential

    return ManagedIdentityCredential(client_id=config.managed_identity_client_id)

