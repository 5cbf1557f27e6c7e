"""crashup events: versioned JSON documents about every recovery action, and the sinks that deliver them.

  contract.py         the type names, make_event(), check_payload()/check_event() compiled from events.schema.json
  sinks.py            JournalSink (durable), WebhookSink (signed), CommandSink; sign()/verify_signature()
  emitter.py          Emitter: each event to every sink, durable ones first
  bus.py              the OpenStack notification bus: BusSink (durable: an outbox), Publisher (background, bounded),
                      envelope()/event_from_body() (oslo messagingv2), PRIORITIES, follow() (a consumer)
  outbox.py           Outbox: one fsync'ed file per event waiting for the broker, drained in order
  journal.py          read()/follow() a journal back, listing() for a terminal
  events.schema.json  the contract, JSON Schema draft 2020-12

Use it as `from crashup_lib import events` then events.make_event(events.HOST_FAILED, ...), events.Emitter...
"""
from crashup_lib.events.contract import (  # noqa: F401 - the package's API
    HOST_FAILED, HOST_FENCING_UNCONFIRMED, HOST_ISOLATED, HOST_MAINTENANCE, HOST_RECOVERED, HOST_STORM, INSTANCE_EVACUATED, INSTANCE_EVACUATION_FAILED,
    INSTANCE_GUEST_FAILED, INSTANCE_GUEST_LEFT_DOWN, INSTANCE_MAINTENANCE, INSTANCE_REPAIRED, POWER_STATES, RESOURCE_ORPHANED, RESOURCE_STALE_RECOVERED, RESOURCE_STALE_UNRECOVERABLE,
    SCHEMA_PATH, SPECVERSION, TYPES, EventError, SchemaError, check_event, check_payload, load_schema, make_event,
    rfc3339, to_json)
from crashup_lib.events.bus import (  # noqa: F401
    PRIORITIES, BusSink, Publisher, envelope, event_from_body, priority)
from crashup_lib.events.emitter import Emitter  # noqa: F401
from crashup_lib.events.outbox import Outbox, OutboxError  # noqa: F401
from crashup_lib.events.journal import (  # noqa: F401
    Events, follow, is_event, listing, parse_line, read, sanitize)
from crashup_lib.events.sinks import (  # noqa: F401
    CommandSink, JournalError, JournalSink, WebhookSink, sign, verify_signature)
