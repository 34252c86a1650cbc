"""Hostile input for the broker: property-based fuzzing (hypothesis) of every command it decodes.

Inputs are raw multipart messages sent by DEALER sockets to the broker's *front* socket (as a client)
and to its *back* socket (as a would-be worker):

- random frames;
- envelopes ``[b"TZ1", <command>, <body>]`` for every command code in ``protocol.py`` (those of the
  other socket and the broker's own outgoing ones included), whose body is a valid message made by the
  real dataclass's ``encode()``, or one mutated: a field dropped, added, of the wrong type, a huge
  value, deep nesting, a body that is no map, bit flips, truncation, inserted or deleted bytes;
- wrong frame counts, versions and command bytes, and bodies just under and over the size limit.

What each input must get, the broker's design (``broker/loop.py``) being the reference:

- **front**: exactly one answer, in order: an ERROR (``protocol`` or ``too_large``, its ``rid`` read
  from the body where it can be, the text ``protocol.decode`` gives) for what does not decode, a REPLY
  or an ERROR of any code for what does. DONE pushes (``watch``) come besides and are skipped;
- **back**: an ERROR (``protocol``, rid 0) for each message that does not decode, in order, and none
  for one that does: a valid message from a worker is acted on without an answer by design (READY
  gets a HEARTBEAT, anything else from a stranger a REREGISTER, BYE nothing);
- the broker process stays alive, logs no traceback (a handler that raised: the loop survives it but
  the message got no answer), keeps serving a fresh client (a job submitted and run to its end), and
  its resident memory stays within a bound after warm-up.

A sentinel after each batch on each socket (a HELLO of a reserved rid, a message of a reserved version)
marks where the answers to the batch end, so a missing answer is seen without waiting on a timeout. The
broker's log is read after each batch: a traceback is a violation, and the batch is replayed one input at
a time to name the input that caused it. Memory is sampled at each health check, with the kernel's
high-water mark (VmHWM) so that a spike between samples counts too.

For long runs, each structured input is followed by a few random byte-level mutants of it, made by a
Random that hypothesis seeds (``--mutants``): hypothesis draws cost milliseconds, mutants microseconds.

Safety: a fuzzed message that would decode is checked before it is sent (:func:`unsafe_reason`):
jobs may only be ``call`` jobs of harmless targets (``tests.jobs:noop``/``add``) or approval gates,
deployed services must require a tag no worker has, schedules keep to a few names, and a fuzzed READY
may not pose as the real worker (name or its tag). Anything else is not sent and is counted as skipped.
Fuzzed workers that register get jobs they never run; those go back to the queue once they expire.
Inputs that would hit a bug found earlier and not fixed yet (:data:`KNOWN_BUGS`) are skipped the same way,
so that a run goes on to find others.

In the suite, ``tests/test_fuzz.py`` runs a short deterministic run. The long run is a target of its own::

    python -m tests.fuzz --inputs 100000 [--seed N] [--durable]

The package, one responsibility a module:

- ``inputs``: what a fuzz input is; the limits, names and ids shared by the rest;
- ``values``: strategies of valid values and of whole valid messages;
- ``mutations``: the damage done to them, and the strategies of inputs and batches;
- ``model``: what each input must get, and which inputs may be sent;
- ``harness``: the live broker, the raw sockets, and the checks of each batch;
- ``__main__``: the long run.
"""

from tests.fuzz.harness import Harness, Stats, Violation, fuzz_cluster, fuzz_settings
from tests.fuzz.inputs import (
    ALL_CODES,
    ALLOWED,
    HEALTH_TAG,
    LIMIT,
    NAMES,
    NEVER_TAG,
    REAL_WORKER,
    SAFE_TARGETS,
    SLACK,
    SOCKET_CODES,
    FuzzInput,
)
from tests.fuzz.model import KNOWN_BUGS, Expect, classify, expect, known_bug, unsafe_reason
from tests.fuzz.mutations import PLACEHOLDER, amplify, batches, fuzz_input, nested, pack_deep, padded
from tests.fuzz.values import VALUES, body_of, valid_message

__all__ = [
    "ALLOWED",
    "ALL_CODES",
    "HEALTH_TAG",
    "KNOWN_BUGS",
    "LIMIT",
    "NAMES",
    "NEVER_TAG",
    "PLACEHOLDER",
    "REAL_WORKER",
    "SAFE_TARGETS",
    "SLACK",
    "SOCKET_CODES",
    "VALUES",
    "Expect",
    "FuzzInput",
    "Harness",
    "Stats",
    "Violation",
    "amplify",
    "batches",
    "body_of",
    "classify",
    "expect",
    "fuzz_cluster",
    "fuzz_input",
    "fuzz_settings",
    "known_bug",
    "nested",
    "pack_deep",
    "padded",
    "unsafe_reason",
    "valid_message",
]
