"""The real adapters and the unit tests' fakes satisfy the same ports (shared/ports.py).

``make lint`` runs mypy --strict on this file, so a signature that drifts from its port (an adapter
gaining a required argument, a fake missing one) fails there; at run time the checks below make
sure the fakes still have the methods a flow calls."""

from __future__ import annotations

from shared.outlook.mailbox_client import MailboxClient
from shared.ports import MailboxGraph, Services
from shared.services import AppServices
from shared.store.mailbox_sync import Lease
from tests.unit.test_push_apply import FakeGraph as CreatingMailbox
from tests.unit.test_reconcile_plan import FakeGraph as DeltaPages


def as_services(real: AppServices) -> Services:
    return real  # mypy: AppServices is a Services


def as_mailbox(real: MailboxClient) -> MailboxGraph:
    return real  # mypy: the real mailbox client is a MailboxGraph


def test_the_lease_renewing_wrapper_answers_everything_a_mailbox_graph_has() -> None:
    wrapper = Lease.__new__(Lease).keeping(DeltaPages({}))  # the reconcile's client (no storage touched)
    assert isinstance(wrapper, MailboxGraph)
    assert wrapper.mailbox_path == DeltaPages({}).mailbox_path  # a flow reads it: found in e2e


def test_the_unit_tests_fake_mailboxes_are_mailbox_graphs() -> None:
    fakes: list[MailboxGraph] = [CreatingMailbox(), DeltaPages({})]
    assert all(isinstance(fake, MailboxGraph) for fake in fakes)


def test_a_fake_without_the_ports_method_is_not_one() -> None:
    class Unrelated:
        def get(self, path: str) -> None: ...

    assert not isinstance(Unrelated(), MailboxGraph)
