"""A small app that exercises every kind of binding the dev host must run, the way Azure would:
HTTP -> queue output -> queue trigger -> table row; a queue message that always fails; a timer."""

import json

import azure.functions as func

from shared import services

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="orders/{order_id}", methods=["POST"])
@app.queue_output(arg_name="orders", queue_name="sample-orders", connection="AzureWebJobsStorage")
def accept_order(req: func.HttpRequest, orders: func.Out[str]) -> func.HttpResponse:
    order = {"id": req.route_params["order_id"], "body": req.get_json(), "tag": req.params.get("tag")}
    orders.set(json.dumps(order))
    return func.HttpResponse(
        json.dumps({"accepted": order["id"]}), status_code=202, mimetype="application/json"
    )


@app.route(route="crash", methods=["GET"])
def crash(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("this invocation fails; the host must keep serving")


@app.queue_trigger(arg_name="msg", queue_name="sample-orders", connection="AzureWebJobsStorage")
def store_order(msg: func.QueueMessage) -> None:
    order = json.loads(msg.get_body())
    services.get().storage.table("SampleOrders").upsert_entity(
        {
            "PartitionKey": "orders",
            "RowKey": order["id"],
            "body": json.dumps(order["body"]),
            "tag": order["tag"] or "",
            "dequeue_count": msg.dequeue_count,
        }
    )


@app.queue_trigger(arg_name="msg", queue_name="sample-always-fails", connection="AzureWebJobsStorage")
def always_fails(msg: func.QueueMessage) -> None:
    services.get().storage.table("SampleAttempts").upsert_entity(
        {"PartitionKey": msg.get_body().decode(), "RowKey": str(msg.dequeue_count)}
    )
    raise ValueError("this message can never be processed")


@app.timer_trigger(arg_name="timer", schedule="0 0 0 1 1 *")
def yearly(timer: func.TimerRequest) -> None:
    services.get().storage.table("SampleTimer").upsert_entity(
        {"PartitionKey": "timer", "RowKey": "yearly", "past_due": timer.past_due}
    )


@app.queue_trigger(arg_name="msg", queue_name="sample-gated", connection="AzureWebJobsStorage")
def gated(msg: func.QueueMessage) -> None:
    """A message named ``hold-*`` runs until the row ``gate``/its name exists; any other finishes at once."""
    import time

    from azure.core.exceptions import ResourceNotFoundError

    table = services.get().storage.table("SampleGated")
    name = msg.get_body().decode()
    table.upsert_entity({"PartitionKey": "started", "RowKey": name})
    deadline = time.monotonic() + 30
    while name.startswith("hold-") and time.monotonic() < deadline:
        try:
            table.get_entity("gate", name)
            break
        except ResourceNotFoundError:
            time.sleep(0.1)
    table.upsert_entity({"PartitionKey": "done", "RowKey": name})
