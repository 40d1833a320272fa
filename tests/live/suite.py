"""The go-live check's scenarios, one printed line per check, a summary and an exit code.

    python -m tests.live            # the check (make test-live)
    python -m tests.live clean      # remove whatever a crashed or killed run left (make test-live-clean)
    python -m tests.live guard      # sign in and only apply the foreign-events guard

Exit codes: 0 every check passed (some may be "NOT CHECKED", each printed with why); 1 a check
failed; 2 refused to run (settings missing, or a calendar that is not a test calendar)."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from tests.live.contract import CallbackReceiver, SignedCrm, user_path
from tests.live.outlook import EncryptedCache, Graph, SignIn

TAG = "[live-check]"  # every event the suite makes (the service's, from its activities, and its own)
FOREIGN_LIMIT = 3  # "more than a few" events not made by the suite: not a test calendar
BACKFILL_SIZE = 50
CRM_ZONE = "America/Bogota"  # UTC-5 all year: 10:00 there is 15:00Z whatever the date
T = TypeVar("T")


class Refused(Exception):
    """Not run at all: exit code 2."""


@dataclass(frozen=True)
class Config:
    service_url: str
    shared_secret: str
    client_id: str
    test_user: str
    tenant: str
    callback_secrets: list[str]
    callback_listen: str | None
    authority_host: str
    graph_base: str
    state_dir: Path
    crm_tenant: str
    i_understand: bool
    timeout: float
    sign_in_timeout: float
    passphrase: str

    @staticmethod
    def from_env(env: dict[str, str], command: str) -> Config:
        needed = ["LIVE_CLIENT_ID", "LIVE_TEST_USER"]
        if command != "guard":
            needed += ["LIVE_SERVICE_URL", "LIVE_CRM_SHARED_SECRET"]
        missing = [name for name in needed if not env.get(name)]
        if missing:
            raise Refused(f"missing settings: {', '.join(missing)} (see docs/go-live.md)")
        return Config(
            service_url=env.get("LIVE_SERVICE_URL", "").rstrip("/"),
            shared_secret=env.get("LIVE_CRM_SHARED_SECRET", ""),
            client_id=env["LIVE_CLIENT_ID"],
            test_user=env["LIVE_TEST_USER"],
            tenant=env.get("LIVE_TENANT") or "organizations",
            callback_secrets=[s for s in env.get("LIVE_CRM_CALLBACK_SECRET", "").split(",") if s],
            callback_listen=env.get("LIVE_CALLBACK_LISTEN") or None,
            authority_host=(env.get("LIVE_AUTHORITY_HOST") or "https://login.microsoftonline.com").rstrip("/"),
            graph_base=(env.get("LIVE_GRAPH_BASE") or "https://graph.microsoft.com/v1.0").rstrip("/"),
            state_dir=Path(env.get("LIVE_STATE_DIR") or ".local/live"),
            crm_tenant=env.get("LIVE_CRM_TENANT") or "live-check",
            i_understand=env.get("LIVE_I_UNDERSTAND") == "1",
            timeout=float(env.get("LIVE_TIMEOUT") or 180),
            sign_in_timeout=float(env.get("LIVE_SIGN_IN_TIMEOUT") or 900),
            passphrase=env.get("LIVE_CACHE_PASSPHRASE") or env.get("LIVE_CRM_SHARED_SECRET") or "",
        )

    @property
    def crm_user(self) -> str:
        return f"live-check:{self.test_user.lower()}"


class CheckFailed(Exception):
    pass


@dataclass
class Report:
    out: Callable[[str], None]
    passed: int = 0
    failed: int = 0
    not_checked: int = 0
    failures: list[str] = field(default_factory=list)

    def check(self, name: str, body: Callable[[], str | None]) -> bool:
        try:
            detail = body()
        except Refused:
            raise
        except Exception as error:  # noqa: BLE001 - any failure is this check's FAIL line; the run goes on
            self.failed += 1
            self.failures.append(name)
            self.out(f"FAIL         {name}: {type(error).__name__ + ': ' if not isinstance(error, CheckFailed) else ''}{error}")
            return False
        self.passed += 1
        self.out(f"PASS         {name}" + (f" ({detail})" if detail else ""))
        return True

    def skip(self, name: str, why: str) -> None:
        self.not_checked += 1
        self.out(f"NOT CHECKED  {name}: {why}")

    def summary(self, where: str) -> int:
        code = 1 if self.failed else 0
        self.out(f"SUMMARY      {self.passed} passed, {self.failed} failed, {self.not_checked} not checked "
                 f"against {where}" + (f"; failed: {', '.join(self.failures)}" if self.failures else ""))
        return code


def wait_for(probe: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``probe`` until it returns something truthy (a deadline, never a fixed wait)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


def utc(text: str) -> datetime:
    """A Graph dateTime read in UTC (we ask for UTC answers) or an RFC 3339 instant."""
    text = text.rstrip("Z")
    if "+" in text[10:] or text[10:].count("-"):
        return datetime.fromisoformat(text).astimezone(UTC)
    return datetime.fromisoformat(text[:26]).replace(tzinfo=UTC)


def z(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LiveCheck:
    def __init__(self, config: Config, out: Callable[[str], None]) -> None:
        self.c = config
        self.out = out
        self.run = uuid.uuid4().hex[:8]
        self.report = Report(out)
        cache = EncryptedCache(config.state_dir, f"{config.authority_host}|{config.client_id}|{config.test_user}",
                               config.passphrase or "no passphrase")
        self.sign_in = SignIn(config.client_id, f"{config.authority_host}/{config.tenant}", config.test_user,
                              cache, lambda text: out(f"SIGN-IN:     {text}"))
        self._token: tuple[str, float] | None = None
        self.graph = Graph(config.graph_base, self.token)
        self.crm = SignedCrm(config.service_url, config.shared_secret) if config.service_url else None
        self.receiver: CallbackReceiver | None = None
        self.callbacks_reach_us = False
        self.foreign_ids: set[str] = set()
        self.version = 0

    # --- plumbing ------------------------------------------------------------------------------------
    def token(self) -> str:
        if self._token is None or time.monotonic() - self._token[1] > 600:
            self._token = (self.sign_in.token(self.c.sign_in_timeout), time.monotonic())
        return self._token[0]

    def path(self, action: str) -> str:
        return user_path(self.c.crm_tenant, self.c.crm_user, action)

    def status(self) -> dict[str, Any]:
        assert self.crm is not None
        answer = self.crm.call("GET", self.path("status"))
        if answer.status_code != 200:
            raise CheckFailed(f"status answered {answer.status_code}: {answer.text[:200]}")
        return dict(answer.json())

    def activity(self, key: str, day: date, start: str, end: str, **changes: Any) -> dict[str, Any]:
        self.version += 1
        return {
            "id": f"live-check-{self.run}-{key}", "version": self.version, "owner_user_id": self.c.crm_user,
            "type": {"id": "live-check-meeting", "name": "Reunión", "show_in_calendar": True},
            "status": "planned", "show_in_calendar": True, "subject": f"{TAG} {self.run} {key}",
            "description": "Creada por la verificación de puesta en marcha; se borra sola.",
            "start": f"{day.isoformat()}T{start}:00", "end": f"{day.isoformat()}T{end}:00",
            "time_zone": CRM_ZONE, "all_day": False, "location": None, "reminder_minutes": None,
            "deal": None, "company": None, "contact": None,
            "url": f"https://crm.example.com/live-check/{self.run}/{key}", **changes,
        }

    def push(self, kind: str, data: dict[str, Any]) -> None:
        assert self.crm is not None
        body = {"id": f"live-check-{uuid.uuid4().hex}", "type": kind, "tenant_id": self.c.crm_tenant,
                "occurred_at": z(datetime.now(UTC)), "data": data}
        answer = self.crm.call("POST", "/api/crm/events", body)
        if answer.status_code != 202:
            raise CheckFailed(f"POST /api/crm/events answered {answer.status_code}: {answer.text[:200]}")

    def ours(self) -> list[dict[str, Any]]:
        return [e for e in self.graph.events() if (e.get("subject") or "").startswith(f"{TAG} {self.run} ")]

    def find(self, key: str) -> dict[str, Any] | None:
        subject = f"{TAG} {self.run} {key}"
        return next((e for e in self.graph.events() if e.get("subject") == subject), None)

    def callback(self, kind: str, activity_id: str, timeout: float | None = None,
                 **data: Any) -> dict[str, Any] | None:
        if self.receiver is None:
            return None
        return self.receiver.wait_for(
            lambda c: c["type"] == kind and c["data"].get("activity_id") == activity_id
            and all(c["data"].get(k) == v for k, v in data.items()),
            self.c.timeout if timeout is None else timeout)

    # --- the guard -----------------------------------------------------------------------------------
    def guard(self) -> str:
        """Refuse a calendar that looks like a real salesperson's (the suite never touches one by accident)."""
        foreign = []
        for event in self.graph.events():
            if not (event.get("subject") or "").startswith(TAG):
                foreign.append(event["id"])
                if len(foreign) > FOREIGN_LIMIT and not self.c.i_understand:
                    raise Refused(
                        f"{self.c.test_user}'s calendar holds more than {FOREIGN_LIMIT} events not created by "
                        "this check: it looks like a real person's calendar. Use a dedicated test user, or set "
                        "LIVE_I_UNDERSTAND=1 to run anyway (the check only ever changes events it created).")
        self.foreign_ids = set(foreign)
        return f"{len(foreign)} event(s) not created by the check, at most {FOREIGN_LIMIT} allowed" + (
            " (LIVE_I_UNDERSTAND=1)" if len(foreign) > FOREIGN_LIMIT else "")

    # --- scenarios -----------------------------------------------------------------------------------
    def connect(self) -> str:
        now = self.status()
        account = (now.get("account") or "").lower()
        if now["state"] == "connected" and account == self.c.test_user.lower():
            return f"reused: {self.c.test_user} already connected"
        if now["state"] == "connected":
            raise CheckFailed(f"the CRM user is connected to {account!r}, not {self.c.test_user!r}")
        assert self.crm is not None
        answer = self.crm.call("POST", self.path("connect"), {
            "return_url": None, "time_zone": CRM_ZONE, "locale": "es", "login_hint": self.c.test_user})
        if answer.status_code != 200:
            raise CheckFailed(f"connect answered {answer.status_code}: {answer.text[:200]}")
        self.out(f"CONNECT:     open {answer.json()['start_url']} and sign in as {self.c.test_user}")
        wait_for(lambda: self.status()["state"] == "connected", self.c.sign_in_timeout, "the sign-in to finish")
        account = (self.status().get("account") or "").lower()
        if account != self.c.test_user.lower():
            raise CheckFailed(f"connected {account!r}, not {self.c.test_user!r}")
        return f"connected {self.c.test_user}"

    def exact_time(self, day: date) -> str:
        activity = self.activity("exact-time", day, "10:00", "11:00")
        self.push("activity.upserted", activity)
        event = wait_for(lambda: self.find("exact-time"), self.c.timeout, "the event in Outlook")
        if self.c.callback_listen and self.c.callback_secrets:
            self.callbacks_reach_us = self.callback("activity.synced", activity["id"], timeout=min(
                self.c.timeout, 60)) is not None
        zone = self.graph.ok("GET", "/me/mailboxSettings/timeZone").get("value")
        start, end = utc(event["start"]["dateTime"]), utc(event["end"]["dateTime"])
        want = datetime(day.year, day.month, day.day, 15, 0, tzinfo=UTC)
        if (start, end) != (want, want + timedelta(hours=1)):
            raise CheckFailed(f"10:00-11:00 {CRM_ZONE} shows as {z(start)}-{z(end)} in Outlook "
                              f"(mailbox zone {zone}); expected {z(want)}-{z(want + timedelta(hours=1))}")
        return f"10:00 {CRM_ZONE} is {z(start)} in a mailbox in {zone}"

    def update(self, day: date) -> str:
        activity = self.activity("exact-time", day, "11:30", "12:15", subject=f"{TAG} {self.run} exact-time")
        activity["description"] = "Actualizada"
        self.updated = activity
        self.push("activity.upserted", activity)
        want = datetime(day.year, day.month, day.day, 16, 30, tzinfo=UTC)
        wait_for(lambda: (e := self.find("exact-time")) and utc(e["start"]["dateTime"]) == want
                 and utc(e["end"]["dateTime"]) == want + timedelta(minutes=45), self.c.timeout,
                 f"the update to {z(want)} in Outlook")
        self.callback("activity.synced", activity["id"], version=activity["version"])
        return f"moved by the CRM to {z(want)}"

    def unchanged(self) -> str:
        before = self.find("exact-time")
        assert before is not None
        same = {**self.updated, "version": self.updated["version"] + 1}
        self.version = same["version"]
        self.push("activity.upserted", same)
        if self.callbacks_reach_us:
            if self.callback("activity.synced", same["id"], version=same["version"]) is None:
                raise CheckFailed("no activity.synced for the unchanged re-push")
            how = "after its activity.synced"
        else:
            # No callback to tell us it was applied: watch Outlook for a while instead.
            deadline = time.monotonic() + min(self.c.timeout, 30)
            while time.monotonic() < deadline:
                now = self.find("exact-time")
                if now is None or now["changeKey"] != before["changeKey"]:
                    break
                time.sleep(1)
            how = "watched for 30 s (no callbacks)"
        after = self.find("exact-time")
        if after is None or after["changeKey"] != before["changeKey"]:
            raise CheckFailed("Outlook's changeKey changed: the unchanged re-push wrote to the event")
        return f"changeKey unchanged, {how}"

    def cancel(self, day: date) -> str:
        cancelled = self.activity("cancelled", day, "13:00", "13:30")
        self.push("activity.upserted", cancelled)
        wait_for(lambda: self.find("cancelled"), self.c.timeout, "the event to cancel in Outlook")
        self.push("activity.upserted", {**self.activity("cancelled", day, "13:00", "13:30"), "status": "cancelled"})
        wait_for(lambda: self.find("cancelled") is None, self.c.timeout, "the cancelled event to leave Outlook")
        return "the cancelled activity's event left Outlook"

    def backfill(self) -> str:
        assert self.crm is not None
        today = datetime.now(UTC).date()
        items = [self.activity(f"sync-{n:02d}", today + timedelta(days=n - 20), "08:00", "08:30")
                 for n in range(BACKFILL_SIZE)]  # 20 days back to 29 ahead: inside the sync window
        answer = self.crm.call("POST", self.path("backfill"), {"activities": items, "last_page": True})
        if answer.status_code != 202:
            raise CheckFailed(f"backfill answered {answer.status_code}: {answer.text[:200]}")
        job = answer.json()["job_id"]
        done = wait_for(lambda: (b := self.status().get("backfill")) and b.get("job_id") == job
                        and b["state"] == "completed" and b, self.c.timeout, "the backfill job to complete")
        if done["counts"]["created"] != BACKFILL_SIZE or done["counts"]["failed"]:
            raise CheckFailed(f"backfill counts {done['counts']}, expected {BACKFILL_SIZE} created")
        shown = [e for e in self.ours() if " sync-" in e["subject"]]
        if len(shown) != BACKFILL_SIZE:
            raise CheckFailed(f"{len(shown)} of the {BACKFILL_SIZE} synced activities are in Outlook")
        if self.receiver is not None and self.callbacks_reach_us:
            if self.receiver.wait_for(lambda c: c["type"] == "backfill.completed"
                                      and c["data"].get("job_id") == job, self.c.timeout) is None:
                raise CheckFailed("no backfill.completed callback")
        self.synced = {e["subject"].rsplit(" ", 1)[1]: e for e in shown}
        return f"{BACKFILL_SIZE} prior activities in Outlook, job {job} completed"

    def moved_in_outlook(self) -> tuple[str, Callable[[], str]]:
        event = self.synced["sync-25"]
        start = utc(event["start"]["dateTime"]) + timedelta(days=1, hours=1)
        end = start + timedelta(minutes=45)
        self.moved_at = datetime.now(UTC)
        self.graph.ok("PATCH", f"/me/events/{event['id']}", json={
            "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {"dateTime": end.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}})
        activity_id = f"live-check-{self.run}-sync-25"

        def by_callback() -> str:
            got = self.callback("activity.changed_in_outlook", activity_id)
            if got is None:
                raise CheckFailed("no activity.changed_in_outlook callback")
            if (utc(got["data"]["start"]), utc(got["data"]["end"])) != (start, end):
                raise CheckFailed(f"reported {got['data']['start']}-{got['data']['end']}, moved to {z(start)}-{z(end)}")
            return f"reported {got['data']['start']}-{got['data']['end']}"

        def by_outlook() -> str:
            now = self.find("sync-25")
            if now is None or utc(now["start"]["dateTime"]) != start:
                raise CheckFailed("the service undid the salesperson's move in Outlook")
            return "Outlook keeps the move after a reconcile"

        return activity_id, by_callback if self.callbacks_reach_us else by_outlook

    def deleted_in_outlook(self) -> tuple[str, Callable[[], str]]:
        before = self.status()["counts"]["synced"]
        self.graph.call("DELETE", f"/me/events/{self.synced['sync-26']['id']}")
        activity_id = f"live-check-{self.run}-sync-26"

        def by_callback() -> str:
            if self.callback("activity.deleted_in_outlook", activity_id) is None:
                raise CheckFailed("no activity.deleted_in_outlook callback")
            return "reported by activity.deleted_in_outlook"

        def by_status() -> str:
            wait_for(lambda: self.status()["counts"]["synced"] == before - 1, self.c.timeout,
                     f"status counts.synced to drop from {before}")
            return f"status counts.synced {before} -> {before - 1}"

        return activity_id, by_callback if self.callbacks_reach_us else by_status

    def reconcile_after(self, since: datetime) -> None:
        """Without callbacks: ask for a reconcile and wait until status says one ran after ``since``."""
        assert self.crm is not None
        answer = self.crm.call("POST", self.path("reconcile"), {})
        if answer.status_code != 202:
            raise CheckFailed(f"reconcile answered {answer.status_code}")
        wait_for(lambda: (r := self.status().get("last_reconcile_at")) and utc(r) > since, self.c.timeout,
                 "a reconcile pass after the Outlook changes")

    def no_echo(self, moved: str) -> str:
        assert self.receiver is not None
        echoes = self.receiver.matching(lambda c: c["type"] == "activity.changed_in_outlook"
                                        and c["data"].get("activity_id") != moved)
        if echoes:
            raise CheckFailed(f"the service reported its own writes as Outlook changes: "
                              f"{sorted({c['data']['activity_id'] for c in echoes})}")
        return "no activity.changed_in_outlook but the salesperson's move (checked after two later reports)"

    def remove_sync(self) -> str:
        assert self.crm is not None
        own = self.graph.ok("POST", "/me/events", json={
            "subject": f"{TAG} {self.run} own-event", "start": {"dateTime": "2030-01-07T09:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2030-01-07T09:30:00", "timeZone": "UTC"}})
        answer = self.crm.call("POST", self.path("disconnect"), {"remove_events": "all"})
        if answer.status_code != 200:
            raise CheckFailed(f"disconnect answered {answer.status_code}: {answer.text[:200]}")
        wait_for(lambda: [e["id"] for e in self.ours()] == [own["id"]], self.c.timeout,
                 "only the salesperson's own event to stay")
        left = {e["id"] for e in self.graph.events()}
        if not self.foreign_ids <= left:
            raise CheckFailed(f"{len(self.foreign_ids - left)} event(s) not made by the service disappeared")
        if self.status()["state"] != "disconnected":
            raise CheckFailed("status does not say disconnected")
        self.graph.call("DELETE", f"/me/events/{own['id']}")
        return (f"removed {(answer.json()['removal'] or {}).get('total', 0)} event(s) of the service; the user's own event and "
                f"{len(self.foreign_ids)} other event(s) untouched")

    # --- the whole run -------------------------------------------------------------------------------
    def main(self) -> int:
        r = self.report
        r.check("sign-in: delegated token for the test user (device code)", lambda: (
            self.token() and f"as {self.c.test_user}"))
        if r.failed:
            return r.summary(self.c.service_url)
        r.check("guard: a test calendar, not a salesperson's", self.guard)
        if self.c.callback_listen and self.c.callback_secrets:
            self.receiver = CallbackReceiver(self.c.callback_listen, self.c.callback_secrets)
        try:
            if not r.check("connect: the test user's Outlook is connected", self.connect):
                return r.summary(self.c.service_url)
            day = datetime.now(UTC).date() + timedelta(days=3)
            r.check("exact time: 10:00 America/Bogota at the right instant", lambda: self.exact_time(day))
            if not self.callbacks_reach_us:
                r.skip("callbacks: received and verified", self._no_callbacks_reason())
            else:
                r.check("callbacks: received and verified", lambda: "activity.synced verified with the callback secret")
            r.check("update: new time in Outlook", lambda: self.update(day))
            r.check("unchanged re-push: Outlook's changeKey stays", self.unchanged)
            r.check("cancel: the event leaves Outlook", lambda: self.cancel(day))
            if r.check(f"sync: {BACKFILL_SIZE} prior activities", self.backfill):
                self._outlook_changes()
            r.check("remove sync: exactly the service's events removed", self.remove_sync)
            if self.receiver is not None and self.receiver.rejected:
                r.check("callbacks: every signature verified", lambda: (_ for _ in ()).throw(
                    CheckFailed(f"{self.receiver.rejected} callback(s) with a bad signature")))
        finally:
            if self.receiver is not None:
                self.receiver.close()
        return r.summary(self.c.service_url)

    def _outlook_changes(self) -> None:
        r = self.report
        started = datetime.now(UTC)
        moved_id, moved_check = self.moved_in_outlook()
        if not self.callbacks_reach_us:
            r.check("Outlook changes: a reconcile ran", lambda: self.reconcile_after(started) or "after the move")
        r.check("move in Outlook: reported", moved_check)
        deleted_at = datetime.now(UTC)
        _, deleted_check = self.deleted_in_outlook()
        if not self.callbacks_reach_us:
            self.reconcile_after(deleted_at)
        r.check("deletion in Outlook: reported", deleted_check)
        if self.callbacks_reach_us:
            r.check("no echo: the service's own writes are not reported back", lambda: self.no_echo(moved_id))
        else:
            r.skip("move in Outlook: activity.changed_in_outlook callback", self._no_callbacks_reason())
            r.skip("deletion in Outlook: activity.deleted_in_outlook callback", self._no_callbacks_reason())
            r.skip("no echo: the service's own writes are not reported back", self._no_callbacks_reason())

    def _no_callbacks_reason(self) -> str:
        if not self.c.callback_listen:
            return "LIVE_CALLBACK_LISTEN not set: the deployment's CRM_CALLBACK_URL does not reach this machine"
        if not self.c.callback_secrets:
            return "LIVE_CRM_CALLBACK_SECRET not set: callbacks cannot be verified"
        return f"no callback reached {self.c.callback_listen} (CRM_CALLBACK_URL points elsewhere?)"

    # --- clean up ------------------------------------------------------------------------------------
    def clean(self) -> int:
        """Remove sync for the check's CRM user (the service deletes its events), then delete every
        event still tagged as the check's, of any run."""
        removed = 0
        if self.crm is not None:
            answer = self.crm.call("POST", self.path("disconnect"), {"remove_events": "all"})
            if answer.status_code == 200:
                removed = int((answer.json().get("removal") or {}).get("total") or 0)
                self.out(f"CLEAN        remove sync for {self.c.crm_user}: {removed} event(s) removed by the service")
            else:
                self.out(f"CLEAN        remove sync answered {answer.status_code}: {answer.text[:200]}")
        deleted = 0
        for event in list(self.graph.events()):
            if (event.get("subject") or "").startswith(TAG):
                if self.graph.call("DELETE", f"/me/events/{event['id']}").status_code in (204, 404):
                    deleted += 1
        left = [e for e in self.graph.events() if (e.get("subject") or "").startswith(TAG)]
        self.out(f"CLEAN        deleted {deleted} leftover event(s) tagged {TAG}; {len(left)} left")
        return 1 if left else 0


def main(argv: list[str], env: dict[str, str], out: Callable[[str], None]) -> int:
    command = argv[0] if argv else "run"
    if command not in ("run", "clean", "guard"):
        out(f"usage: python -m tests.live [run|clean|guard], not {command!r}")
        return 2
    try:
        config = Config.from_env(env, command)
        check = LiveCheck(config, out)
        if command == "clean":
            return check.clean()
        if command == "guard":
            check.report.check("sign-in: delegated token for the test user (device code)", lambda: (
                check.token() and f"as {config.test_user}"))
            check.report.check("guard: a test calendar, not a salesperson's", check.guard)
            return check.report.summary(config.graph_base)
        return check.main()
    except Refused as refused:
        out(f"REFUSED      {refused}")
        return 2


def cli() -> int:
    def out(line: str) -> None:
        print(line, flush=True)

    return main(sys.argv[1:], dict(os.environ), out)
