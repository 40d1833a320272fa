"""Queue names, in one place: the triggers in functions/, the senders in shared/ and infra/ agree."""

ACTIVITY_SYNC = "activity-sync"
MAILBOX_RECONCILE = "mailbox-reconcile"
CRM_CALLBACKS = "crm-callbacks"
ACTIVITY_BACKFILL = "activity-backfill"  # backfill chunks of up to 20 activities (shared/flows/backfill_worker.py)
CALENDAR_MOVE = "calendar-move"  # a calendar switch's move of our events, a page per message
MAILBOX_REMOVAL = "mailbox-removal"  # "Remove sync" as a job, $batches of 20 DELETEs (shared/flows/removal.py)
QUEUE_NAMES = (ACTIVITY_SYNC, MAILBOX_RECONCILE, CRM_CALLBACKS, ACTIVITY_BACKFILL, CALENDAR_MOVE, MAILBOX_REMOVAL)
