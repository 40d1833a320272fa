"""``backfill.completed`` survives the process dying around the moment it is sent: the job row
says ``completed`` before the callback is queued, so a death between the two used to leave a job
marked sent whose callback was never queued. Now the next look at the job (the redelivered chunk
message, or ``status``) queues it, always with the same id."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest

from local.azurite import Azurite
from shared.rules import queues
from shared.rules.backfill_plan import Counts
from shared.rules.settings import storage_settings, work_queue_shards
from shared.store import backfill_jobs, tables, work_queues
from shared.store.storage import Storage

pytestmark = pytest.mark.integration


class Dies(BaseException):
    """The process is gone: no ``except Exception`` after this point runs."""


class DyingStorage:
    """Real storage, except that the process dies at one chosen step."""

    def __init__(self, real: Storage, at: str) -> None:
        self.real, self.at = real, at

    def send(self, queue: str, body: str, *, delay_seconds: int = 0) -> None:
        if self.at == "queueing":
            raise Dies("the process died before the callback was queued")
        self.real.send(queue, body, delay_seconds=delay_seconds)

    def table(self, name: str) -> Any:
        table = self.real.table(name)
        if self.at != "marking":
            return table

        class Dying:
            def __getattr__(self, attr: str) -> Any:
                if attr == "update_entity":
                    raise Dies("the process died after queueing, before marking the job")
                return getattr(table, attr)

        return Dying()


def completed_job(storage: Storage) -> backfill_jobs.Job:
    tenant, user = f"tenant-{uuid.uuid4().hex[:8]}", "user/7"
    job = backfill_jobs.Job(
        tenant,
        user,
        job_id=f"job-{uuid.uuid4().hex[:6]}",
        total=3,
        counts=Counts(created=2, ineligible=1),
        last_page=True,
    ).with_state()
    assert job.state == backfill_jobs.COMPLETED
    storage.table(tables.JOBS).upsert_entity(backfill_jobs.job_entity(job))
    return backfill_jobs.get_job(storage, tenant, user, job.job_id)


def queued_for(storage: Storage, job: backfill_jobs.Job) -> list[dict[str, Any]]:
    found = []
    for message in storage.queue(work_queues.name(queues.CRM_CALLBACKS, job.tenant)).peek_messages(max_messages=32):
        body = json.loads(message.content)
        if body["type"] == "backfill.completed" and body["data"]["job_id"] == job.job_id:
            found.append(body)
    return found


@pytest.fixture()
def storage(azurite: Azurite) -> Storage:
    storage = Storage(storage_settings({"AzureWebJobsStorage": azurite.connection_string}))
    for name in queues.all_queues(work_queue_shards(), (queues.CRM_CALLBACKS,)):
        storage.queue(name).clear_messages()
    return storage


@pytest.mark.parametrize("dies_while", ["queueing", "marking"])
def test_a_death_while_sending_backfill_completed_does_not_lose_it(storage: Storage, dies_while: str) -> None:
    job = completed_job(storage)
    with pytest.raises(Dies):
        backfill_jobs.finish(DyingStorage(storage, dies_while), job)

    again = backfill_jobs.get_job(storage, job.tenant, job.user, job.job_id)
    backfill_jobs.finish(storage, again)  # the chunk message comes back and looks at the job

    sent = queued_for(storage, job)
    assert {c["id"] for c in sent} == {job.callback_id}  # once, or repeated with the same id
    assert sent[-1]["data"] == {
        "job_id": job.job_id,
        "created": 2,
        "updated": 0,
        "unchanged": 0,
        "ineligible": 1,
        "failed": 0,
    }
    marked = backfill_jobs.get_job(storage, job.tenant, job.user, job.job_id)
    assert marked.callback_sent
    backfill_jobs.finish(storage, marked)
    assert len(queued_for(storage, job)) == len(sent)  # marked: no more repeats


def test_status_leaves_a_just_completed_job_to_its_worker_then_sends_what_it_lost(storage: Storage) -> None:
    job = completed_job(storage)
    assert backfill_jobs.status(storage, job.tenant, job.user)["state"] == "completed"
    assert queued_for(storage, job) == []  # the worker that completed it is about to send it

    later = job.completed_at + backfill_jobs.STATUS_WAIT + timedelta(seconds=1)
    backfill_jobs.finish(storage, job, wait=backfill_jobs.STATUS_WAIT, now=later)
    assert [c["id"] for c in queued_for(storage, job)] == [job.callback_id]
