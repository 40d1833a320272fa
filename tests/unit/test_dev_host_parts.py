"""Pure parts of the dev host: route templates, NCRONTAB schedules and host.json TimeSpans."""

from datetime import UTC, datetime

import pytest

from local.host import _timespan
from local.host.http import Route, compile_route
from local.host.timers import next_occurrence


@pytest.mark.parametrize(
    ("template", "path", "params"),
    [
        (
            "tenants/{tenant}/users/{user}/connect",
            "/api/tenants/t1/users/u%2F2/connect",
            {"tenant": "t1", "user": "u%2F2"},
        ),
        (
            "tenants/{tenant}/users/{user}/connect",
            "/API/Tenants/t1/Users/u2/CONNECT",
            {"tenant": "t1", "user": "u2"},
        ),
        ("items/{id:int}", "/api/items/42", {"id": "42"}),
        ("items/{id?}", "/api/items", {}),
        ("files/{*rest}", "/api/files/a/b/c", {"rest": "a/b/c"}),
        ("health", "/api/health/extra", None),
        ("tenants/{tenant}", "/api/tenants/", None),
    ],
)
def test_route_templates_match_as_the_host_does(template: str, path: str, params: dict | None) -> None:
    route = Route(spec=None, pattern=compile_route(template, "api"), methods=None)
    assert route.match(path) == params


def test_ncrontab_has_seconds_first() -> None:
    start = datetime(2026, 3, 1, 0, 0, 0, tzinfo=UTC)
    assert next_occurrence("*/10 * * * * *", start) == datetime(2026, 3, 1, 0, 0, 10, tzinfo=UTC)
    assert next_occurrence("0 30 */6 * * *", start) == datetime(2026, 3, 1, 0, 30, tzinfo=UTC)
    assert next_occurrence("0 0 3 * * 1", start) == datetime(2026, 3, 2, 3, 0, tzinfo=UTC)  # Monday


def test_five_field_cron_is_refused() -> None:
    with pytest.raises(ValueError, match="six fields"):
        next_occurrence("*/5 * * * *", datetime(2026, 1, 1, tzinfo=UTC))


def test_host_json_timespans() -> None:
    assert _timespan("00:00:30", 0) == 30
    assert _timespan("01:02:03.5", 0) == 3723.5
    assert _timespan(None, 2.0) == 2.0
    with pytest.raises(ValueError, match="TimeSpan"):
        _timespan("30s", 0)


def test_app_settings_override_host_json_as_in_azure(tmp_path) -> None:  # noqa: ANN001
    from local.host import read_host_json

    path = tmp_path / "host.json"
    path.write_text('{"extensions": {"queues": {"batchSize": 16, "maxDequeueCount": 5}}}')
    _, options = read_host_json(path, {"AzureFunctionsJobHost__extensions__queues__batchSize": "4"})
    assert (options.batch_size, options.max_dequeue_count) == (4, 5)
    _, untouched = read_host_json(path, {})
    assert untouched.batch_size == 16
    assert untouched.new_batch_threshold is None  # the whole batch first, unless asked
    _, platform = read_host_json(path, {"AzureFunctionsJobHost__extensions__queues__newBatchThreshold": "8"})
    assert platform.new_batch_threshold == 8


def test_every_shard_of_every_work_queue_gets_its_own_trigger() -> None:
    import azure.functions as func

    from functions.shards import queue_triggers
    from local.host.functions import index
    from shared.rules.settings import work_queue_shards

    app = func.FunctionApp()
    bp = func.Blueprint()
    seen: list[bytes] = []
    queue_triggers(bp, "activity-sync", "sync_activity", lambda msg: seen.append(msg.get_body()))
    app.register_functions(bp)
    specs = index(app)
    shards = work_queue_shards()
    assert [(s.name, s.trigger["queueName"]) for s in specs] == [
        ("sync_activity", "activity-sync"),
        *((f"sync_activity_{n}", f"activity-sync-{n}") for n in range(1, shards)),
    ]
    specs[-1].user_function(msg=func.QueueMessage(body=b"x"))
    assert seen == [b"x"]


def test_triggers_take_turns_in_the_shared_pool_and_it_runs_no_more_than_its_size() -> None:
    """With PYTHON_THREADPOOL_THREAD_COUNT, a trigger's single message runs after one invocation of
    another trigger's backlog, not after all of it, and never more than the pool's size at once."""
    import threading

    from local.host.queues import TakingTurns, taking_turns

    release = threading.Event()
    first_running = threading.Event()
    order: list[str] = []
    running = 0
    most = 0
    lock = threading.Lock()

    def invocation(name: str) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        first_running.set()
        release.wait(5)
        with lock:
            order.append(name)
            running -= 1

    turns = TakingTurns(1)
    busy = turns.submit("reconcile_mailbox", lambda: invocation("busy"))
    assert first_running.wait(5)  # the one thread is taken: what follows waits in line
    backlog = [turns.submit("sync_activity_3", lambda n=n: invocation(f"a{n}")) for n in range(5)]
    single = turns.submit("sync_activity", lambda: invocation("b"))
    release.set()
    for done in [busy, *backlog, single]:
        done.result(timeout=5)
    assert order == ["busy", "a0", "b", "a1", "a2", "a3", "a4"]  # b after one of the backlog, not all
    assert most == 1

    failing = TakingTurns(2).submit("t", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=5)
    assert taking_turns({}) is None
    with pytest.raises(ValueError, match="PYTHON_THREADPOOL_THREAD_COUNT"):
        taking_turns({"PYTHON_THREADPOOL_THREAD_COUNT": "0"})
