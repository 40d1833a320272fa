"""The peer for the cold-start benchmark: the same functions as our app, written the way the
official samples and SDK docs lead a developer to write them: the Graph SDK, azure-identity, MSAL
and the storage SDKs imported and clients built at module level. Bodies are stubs; only what
``import function_app`` costs is measured."""

import json
import os

import azure.functions as func
import msal
import requests
from azure.data.tables import TableServiceClient
from azure.identity import ClientSecretCredential
from azure.storage.queue import QueueServiceClient
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from msgraph import GraphServiceClient
from msgraph.generated.models.event import Event
from msgraph.generated.models.subscription import Subscription

CONNECTION = os.environ.get("AzureWebJobsStorage", "UseDevelopmentStorage=true")
tables = TableServiceClient.from_connection_string(CONNECTION)
queues = QueueServiceClient.from_connection_string(CONNECTION)
credential = ClientSecretCredential(
    "common", os.environ.get("MS_CLIENT_ID", "x"), os.environ.get("MS_CLIENT_SECRET", "x")
)
graph = GraphServiceClient(credential, scopes=["https://graph.microsoft.com/.default"])
session = requests.Session()
_unused = (msal, AESGCM, Event, Subscription, json)

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


def _ok(*_: object) -> func.HttpResponse:
    return func.HttpResponse("{}", mimetype="application/json")


@app.route(route="health", methods=["GET"])
def health(req: func.HttpRequest) -> func.HttpResponse:
    return _ok(req)


@app.route(route="tenants/{tenant}/users/{user}/connect", methods=["POST"])
def connect(req: func.HttpRequest) -> func.HttpResponse:
    return _ok(req)


@app.route(route="tenants/{tenant}/users/{user}/disconnect", methods=["POST"])
def disconnect(req: func.HttpRequest) -> func.HttpResponse:
    return _ok(req)


@app.route(route="tenants/{tenant}/users/{user}/status", methods=["GET"])
def status(req: func.HttpRequest) -> func.HttpResponse:
    return _ok(req)


@app.route(route="tenants/{tenant}/users/{user}/backfill", methods=["POST"])
def backfill(req: func.HttpRequest) -> func.HttpResponse:
    return _ok(req)


@app.route(route="auth/callback", methods=["GET"])
def auth_callback(req: func.HttpRequest) -> func.HttpResponse:
    return _ok(req)


@app.route(route="crm/events", methods=["POST"])
def crm_events(req: func.HttpRequest) -> func.HttpResponse:
    return _ok(req)


@app.route(route="graph/notifications", methods=["POST"])
def graph_notifications(req: func.HttpRequest) -> func.HttpResponse:
    return _ok(req)


@app.route(route="graph/lifecycle", methods=["POST"])
def graph_lifecycle(req: func.HttpRequest) -> func.HttpResponse:
    return _ok(req)


@app.queue_trigger(arg_name="msg", queue_name="activity-sync", connection="AzureWebJobsStorage")
def activity_worker(msg: func.QueueMessage) -> None:
    pass


@app.queue_trigger(arg_name="msg", queue_name="mailbox-reconcile", connection="AzureWebJobsStorage")
def reconcile_worker(msg: func.QueueMessage) -> None:
    pass


@app.queue_trigger(arg_name="msg", queue_name="crm-callbacks", connection="AzureWebJobsStorage")
def callbacks_worker(msg: func.QueueMessage) -> None:
    pass


@app.timer_trigger(arg_name="timer", schedule="0 0 */6 * * *")
def housekeeping(timer: func.TimerRequest) -> None:
    pass
