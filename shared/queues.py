"""Queue names, in one place: the triggers in functions/, the senders in shared/ and infra/ agree."""

ACTIVITY_SYNC = "activity-sync"
MAILBOX_RECONCILE = "mailbox-reconcile"
CRM_CALLBACKS = "crm-callbacks"
QUEUE_NAMES = (ACTIVITY_SYNC, MAILBOX_RECONCILE, CRM_CALLBACKS)
