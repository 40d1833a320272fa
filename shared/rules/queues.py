"""Queue names, in one place: the triggers in functions/, the senders in shared/ and infra/ agree."""

ACTIVITY_SYNC = "activity-sync"
MAILBOX_RECONCILE = "mailbox-reconcile"
CRM_CALLBACKS = "crm-callbacks"
ACTIVITY_BACKFILL = "activity-backfill"  # backfill chunks of up to 20 activities (shared/flows/backfill_worker.py)
CALENDAR_MOVE = "calendar-move"  # a calendar switch's move of our events, a page per message
USER_ENABLE = "user-enable"  # organisation mode: enable (or stop) one app-only user (shared/flows/organization.py)
QUEUE_NAMES = (ACTIVITY_SYNC, MAILBOX_RECONCILE, CRM_CALLBACKS, ACTIVITY_BACKFILL, CALENDAR_MOVE, USER_ENABLE)
