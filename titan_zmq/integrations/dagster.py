"""Dagster ops that run as titan jobs: :func:`titan_op` and the :class:`TitanResource` (extra ``[dagster]``).

::

    import dagster as dg
    from titan_zmq.integrations.dagster import TitanResource, titan_op
    from mypkg import steps                       # plain functions, importable on the workers

    extract = titan_op(steps.extract)
    train = titan_op(steps.train, requires="gpu", retry_policy=dg.RetryPolicy(max_retries=2, delay=5))
    evaluate = titan_op(steps.evaluate)

    @dg.job(resource_defs={"titan": TitanResource()})   # broker: its config, else $TITAN_BROKER
    def training():
        data = extract()
        evaluate(train(data), data)

Each op's body submits one titan ``call`` job (the function by name, the op's inputs as its keyword
arguments, ``requires`` from the op's ``titan/requires`` tag), forwards the job's stdout and stderr
lines to ``context.log`` while it runs (they are events of the Dagster run; they are also written
to the step's own stdout and stderr, which Dagster captures), and returns the job's result as the
op's output, or raises ``dagster.Failure`` with the job's error and remote traceback.

Retries are Dagster's: every job is submitted with titan ``retries=0``, and a failed one fails the
Dagster attempt; the op's ``RetryPolicy`` (``max_retries``, ``delay``, ``backoff``, ``jitter``)
then makes Dagster run the op again, which submits a new titan job labelled with the attempt
number (``dagster/attempt``). Dagster's event log thus shows each attempt (``STEP_UP_FOR_RETRY``,
``STEP_RESTARTED``) and each attempt is one titan job with its own log. A lost worker is not an
attempt: titan runs the job again elsewhere by itself, within the same Dagster attempt. See
docs/dagster.md.
"""

from __future__ import annotations

import inspect
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

try:
    import dagster as dg
    from pydantic import Field
except ImportError as exc:  # pragma: no cover - exercised where the extra is not installed
    raise ImportError(
        f"titan_zmq.integrations.dagster needs Dagster ({exc}); install it with: pip install 'titan_zmq[dagster]'"
    ) from exc

from titan_zmq import wire
from titan_zmq.client import TitanClient
from titan_zmq.client.feed import LogLine
from titan_zmq.client.handle import raise_for
from titan_zmq.errors import (
    BadRequest,
    BrokerUnavailable,
    Conflict,
    Forbidden,
    JobError,
    JobFailed,
    PayloadTooLarge,
    TitanError,
    WaitTimeout,
)
from titan_zmq.job import JobRecord, JobState, check_tags
from titan_zmq.objects.codec import as_ref

__all__ = ["PRIORITY_TAG", "REQUIRES_TAG", "TIMEOUT_TAG", "TitanResource", "titan_op"]

log = logging.getLogger(__name__)

REQUIRES_TAG = "titan/requires"  # op tag: capability tags the worker must have, "gpu" or "gpu,highmem"
PRIORITY_TAG = "titan/priority"  # op tag: the job's priority (higher first)
TIMEOUT_TAG = "titan/timeout"  # op tag: seconds before titan kills the job's process tree

INLINE_MAX = 256 * 1024  # an input larger than this (packed) travels as a titan object, not in the job message
_POLL_MIN, _POLL_MAX = 0.2, 1.0  # seconds between reads of the job's log: quick while it writes, slower when quiet
_SCALARS = (int, float, str, bool)  # parameter annotations that become Dagster types of inputs
_REFUSED = (JobError, BadRequest, Conflict, Forbidden, PayloadTooLarge)
_STATUS_EVERY = 2.0  # seconds between looks at a job not yet running (to say where it is waiting)
# Job fields the op sets itself: given in ``options`` they would contradict it.
_OWN_FIELDS = frozenset({
    "call", "shell", "script", "project", "approval", "args", "kwargs", "id", "retries", "backoff",
    "idempotency_key", "depends_on", "dag", "requires", "priority", "timeout",
})  # fmt: skip


class TitanResource(dg.ConfigurableResource):
    """Where the ops' titan jobs go: the broker and how to reach it.

    ``broker`` is ``HOST[:PORT]`` of the broker's front port, or a broker group's members
    (``a:5555,b:5555,c:5555``); unset, ``$TITAN_BROKER`` (read where the op runs), else
    ``localhost:5555``. ``keys`` is a CURVE key folder (``titan keys generate``; unset:
    ``$TITAN_KEYS``) for a broker that requires it. ``timeout`` bounds each request to the
    broker, not the job.
    """

    broker: str | None = Field(default=None, description="HOST[:PORT] of the titan broker (default: $TITAN_BROKER)")
    # Given and configured as ``keys`` (as ``--keys``); the attribute has another name because a
    # resource's ``keys`` would hide the mapping method Dagster reads its fields with.
    key_dir: str | None = Field(
        default=None, alias="keys", description="CURVE key folder for an encrypted broker (default: $TITAN_KEYS)"
    )
    timeout: float = Field(default=10.0, gt=0, description="seconds to wait for each answer of the broker")

    def get_client(self) -> TitanClient:
        """A new client of the broker (the caller closes it)."""
        return TitanClient(self.broker, timeout=self.timeout, keys=self.key_dir)


@dataclass(frozen=True)
class _Spec:
    """What a titan op submits, fixed when the op is defined."""

    target: str
    kwargs: Mapping[str, Any]
    resource_key: str
    fetch: bool
    echo: bool
    max_log_lines: int
    options: Mapping[str, Any] = field(default_factory=dict)


def titan_op(
    fn: Callable[..., Any] | str,
    *,
    name: str | None = None,
    ins: Iterable[str] | Mapping[str, dg.In] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    requires: Iterable[str] | str | None = None,
    priority: int | None = None,
    timeout: float | None = None,
    retry_policy: dg.RetryPolicy | None = None,
    tags: Mapping[str, str] | None = None,
    description: str | None = None,
    resource_key: str = "titan",
    fetch: bool = True,
    echo: bool = True,
    max_log_lines: int = 10_000,
    options: Mapping[str, Any] | None = None,
) -> dg.OpDefinition:
    """A Dagster op whose body runs ``fn`` as a titan job on a worker.

    ``fn`` is a function importable on the workers by its module (not ``__main__``; keep such
    functions in a module that does not import Dagster), or its ``"package.module:function"``
    name. Its parameters become the op's inputs (those with defaults are optional inputs), except
    those fixed in ``kwargs``; with a name, or to choose, give ``ins`` (names, or a mapping of
    names to ``dagster.In``). The job gets the inputs as keyword arguments: values msgpack can
    carry travel in the job, anything else (or anything over 256 KiB) as a titan object, pickled.

    ``requires``, ``priority`` and ``timeout`` become the op tags ``titan/requires``,
    ``titan/priority`` and ``titan/timeout``, which can also be set on the op or its invocation
    (``train.tag({"titan/requires": "gpu"})``). ``retry_policy`` is Dagster's (see the module's
    docstring). ``fetch=False`` leaves a large result on its worker and makes the output its
    ObjectRef (a downstream titan op's job then receives the value itself). ``echo`` also writes
    the job's output to this process's stdout and stderr; at most ``max_log_lines`` lines become
    log events. ``options`` are further job fields (``env``, ``node``, ``fallback``, ``labels``...).
    The op needs the resource ``resource_key`` (a :class:`TitanResource`).
    """
    target, op_name, fn_ins, doc = _describe(fn)
    fixed = dict(kwargs or {})
    op_ins = _resolve_ins(op_name, ins, fn_ins, fixed, resource_key)
    op_tags = dict(tags or {})
    if requires is not None:
        op_tags[REQUIRES_TAG] = ",".join(sorted(_tags(op_name, requires)))
    if priority is not None:
        op_tags[PRIORITY_TAG] = str(priority)
    if timeout is not None:
        op_tags[TIMEOUT_TAG] = str(timeout)
    try:
        _job_fields(op_tags)
    except ValueError as exc:
        raise dg.DagsterInvalidDefinitionError(f"titan op {name or op_name}: {exc}") from None
    extra = dict(options or {})
    clash = sorted(set(extra) & _OWN_FIELDS)
    if clash:
        raise dg.DagsterInvalidDefinitionError(
            f"titan op {name or op_name}: options {clash} are set by the op itself: give inputs, kwargs=, "
            "requires=/priority=/timeout= (or their op tags), and a Dagster retry_policy instead"
        )
    if max_log_lines < 0:
        raise dg.DagsterInvalidDefinitionError(f"titan op {name or op_name}: max_log_lines must be 0 or more")
    spec = _Spec(target, fixed, resource_key, fetch, echo, max_log_lines, extra)

    def compute(context: Any, **inputs: Any) -> Iterator[dg.Output[Any]]:
        # As an asset (AssetsDefinition.from_op), the op gets an AssetExecutionContext: it wraps the op's.
        yield from _run_step(getattr(context, "op_execution_context", context), spec, inputs)

    # Dagster reads an op's inputs, and the order its invocation's positional arguments take, from its
    # function's signature: this one's is the inputs' (as the titan function lists them), less those
    # of type Nothing (they only order the op after others, and carry no value).
    data_ins = [n for n, i in op_ins.items() if not i.to_definition(n).dagster_type.is_nothing]
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("context", *data_ins)]
    compute.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return dg.op(
        name=name or op_name,
        ins=op_ins,
        out=dg.Out(description=f"what {target} returned"),
        description=description or f"Runs {target} as a titan job." + (f"\n\n{doc}" if doc else ""),
        required_resource_keys={resource_key},
        tags=op_tags,
        retry_policy=retry_policy,
    )(compute)


def _describe(fn: Callable[..., Any] | str) -> tuple[str, str, dict[str, dg.In], str]:
    """``fn``'s job target, default op name, inputs (from its signature) and docstring."""
    if isinstance(fn, str):
        path, sep, name = fn.partition(":")
        if not sep or not path or not name:
            raise dg.DagsterInvalidDefinitionError(
                f"titan op: {fn!r} must name a function as 'package.module:function'"
            )
        return fn, name.rsplit(".", 1)[-1], {}, ""
    if isinstance(fn, (dg.OpDefinition, dg.GraphDefinition)):
        raise dg.DagsterInvalidDefinitionError(
            f"titan op: {fn.name} is already a Dagster op; pass the plain function it should run"
        )
    module = getattr(fn, "__module__", None)
    qual = getattr(fn, "__qualname__", None)
    if not callable(fn) or not module or not qual or "<" in qual:
        raise dg.DagsterInvalidDefinitionError(
            f"titan op: {fn!r} cannot be found by name on a worker; pass a function defined at the top level "
            "of a module (not a lambda, a nested function or a Dagster op), or its 'package.module:function'"
        )
    if module == "__main__":
        raise dg.DagsterInvalidDefinitionError(
            f"titan op: {qual} is defined in __main__, which workers (and Dagster's step processes) cannot "
            "import; move it to a module importable on the workers"
        )
    return f"{module}:{qual}", qual.rsplit(".", 1)[-1], _signature_ins(fn, qual), inspect.getdoc(fn) or ""


def _signature_ins(fn: Callable[..., Any], qual: str) -> dict[str, dg.In]:
    """An input per named parameter. One annotated ``int``, ``float``, ``str`` or ``bool`` gets that
    Dagster type (checked, and given in run config as a plain value); any other is of type Any."""
    try:
        params = inspect.signature(fn, eval_str=True).parameters
    except (NameError, TypeError, SyntaxError):  # annotations that do not evaluate here: untyped inputs
        params = inspect.signature(fn).parameters
    ins: dict[str, dg.In] = {}
    for p in params.values():
        if p.kind is p.POSITIONAL_ONLY:
            raise dg.DagsterInvalidDefinitionError(
                f"titan op: {qual} has the positional-only parameter {p.name}; the job passes inputs by name"
            )
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue  # more inputs than its named parameters: give them with ins=
        kind = p.annotation if p.annotation in _SCALARS and p.default is not None else Any
        ins[p.name] = dg.In(kind) if p.default is p.empty else dg.In(kind, default_value=p.default)
    return ins


def _resolve_ins(
    op: str, ins: Iterable[str] | Mapping[str, dg.In] | None, derived: dict[str, dg.In], fixed: Mapping[str, Any],
    resource_key: str,
) -> dict[str, dg.In]:  # fmt: skip
    """The op's inputs: ``ins`` as given, else the function's parameters less those ``fixed`` by kwargs=."""
    if ins is None:
        out = {k: v for k, v in derived.items() if k not in fixed}
    elif isinstance(ins, str):
        raise dg.DagsterInvalidDefinitionError(f"titan op {op}: ins must be a list of names, not one string")
    else:
        out = {str(k): v for k, v in ins.items()} if isinstance(ins, Mapping) else {str(k): dg.In() for k in ins}
        both = sorted(set(out) & set(fixed))
        if both:
            raise dg.DagsterInvalidDefinitionError(
                f"titan op {op}: {both} are both inputs (ins=) and fixed values (kwargs=); give each one once"
            )
    reserved = sorted(set(out) & {"context", "config", resource_key})
    if reserved:
        raise dg.DagsterInvalidDefinitionError(
            f"titan op {op}: Dagster gives an op's {reserved} itself, so they cannot be inputs; rename the "
            "parameter, or fix its value with kwargs="
        )
    return out


def _tags(op: str, requires: Iterable[str] | str) -> frozenset[str]:
    try:
        return check_tags(list(requires) if not isinstance(requires, str) else requires)
    except TitanError as exc:
        raise dg.DagsterInvalidDefinitionError(f"titan op {op}: {exc}") from None


def _job_fields(tags: Mapping[str, Any]) -> dict[str, Any]:
    """``requires``, ``priority`` and ``timeout`` from the op's tags; ValueError naming a bad one."""
    out: dict[str, Any] = {}
    raw = tags.get(REQUIRES_TAG)
    if raw:
        try:
            out["requires"] = sorted(check_tags(str(raw)))
        except TitanError as exc:
            raise ValueError(f"tag {REQUIRES_TAG}={raw!r}: {exc}") from None
    for key, field_, kind in ((PRIORITY_TAG, "priority", int), (TIMEOUT_TAG, "timeout", float)):
        value = tags.get(key)
        if value is None or value == "":
            continue
        try:
            out[field_] = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"tag {key}={value!r} must be a {'whole ' if kind is int else ''}number") from None
    return out


# ---- running one step ------------------------------------------------------------------------


def _run_step(context: dg.OpExecutionContext, spec: _Spec, inputs: Mapping[str, Any]) -> Iterator[dg.Output[Any]]:
    """Submit the step's job, follow it to its end, and yield its result (or raise Failure)."""
    resource = getattr(context.resources, spec.resource_key)
    if not isinstance(resource, TitanResource):
        raise dg.Failure(
            f"the resource {spec.resource_key!r} is a {type(resource).__name__}, not a TitanResource; "
            f"give the job resource_defs={{{spec.resource_key!r}: TitanResource(...)}}",
            allow_retries=False,
        )
    step = context.get_step_execution_context().step.key
    try:
        fields = _job_fields(context.op.tags)
    except ValueError as exc:
        raise dg.Failure(f"titan op {step}: {exc}", allow_retries=False) from None
    attempt = context.retry_number
    labels = {**dict(spec.options.get("labels") or {}), "dagster/run_id": context.run_id,
              "dagster/job": context.job_name, "dagster/step": step, "dagster/attempt": str(attempt)}  # fmt: skip
    try:
        client = resource.get_client()
    except TitanError as exc:  # a broker address that does not parse, keys that are not there...
        raise dg.Failure(f"titan op {step}: the {spec.resource_key!r} resource: {exc}", allow_retries=False) from None
    puts: list[Any] = []
    try:
        kwargs = {k: _portable(client, v, puts) for k, v in {**spec.kwargs, **inputs}.items()}
        handle = client.submit(
            spec.target, kwargs=kwargs, retries=0, labels=labels,
            # The same step attempt of the same run is the same job: a resubmission finds the first one.
            idempotency_key=f"dagster:{context.run_id}:{step}:{attempt}",
            **fields, **{k: v for k, v in spec.options.items() if k != "labels"},
        )  # fmt: skip
        where = ",".join(fields.get("requires", ())) or "any worker"
        context.log.info(f"titan job {handle.id} submitted to {client.address}: {spec.target} on {where}")
        record = _follow(context, client, handle.id, spec)
        yield _outcome(context, client, record, spec)
    except BrokerUnavailable as exc:
        raise dg.Failure(
            f"titan op {step}: {exc}. The broker comes from the {spec.resource_key!r} resource's config "
            "(broker: HOST:PORT), else $TITAN_BROKER where the step runs",
            metadata={"titan_broker": client.address},
        ) from None
    except _REFUSED as exc:  # a job the broker (or the client) refused as it is: no retry helps
        raise dg.Failure(f"titan op {step}: {type(exc).__name__}: {exc}", allow_retries=False) from None
    except TitanError as exc:  # a transfer that failed, a limit reached...: the retry policy decides
        raise dg.Failure(f"titan op {step}: {type(exc).__name__}: {exc}") from None
    finally:
        for ref in puts:
            try:
                client.release(ref)
            except TitanError as exc:
                log.debug("could not release input object %s: %s", ref.id, exc)
        client.close()


def _portable(client: TitanClient, value: Any, puts: list[Any]) -> Any:
    """``value`` as it can travel in a job: itself, or (too big for msgpack, or not msgpack) a titan object."""
    try:
        if len(wire.packb(value)) <= INLINE_MAX:
            return value
    except (TypeError, ValueError, OverflowError):
        pass
    ref = client.put(value)  # pickled; the job receives the value itself
    puts.append(ref)
    return ref


class _Forwarder:
    """The job's output lines into the Dagster run's log (and this process's stdout and stderr)."""

    def __init__(self, context: dg.OpExecutionContext, job_id: str, spec: _Spec) -> None:
        self.context, self.job_id, self.spec = context, job_id, spec
        self.after = 0  # the last line forwarded
        self.logged = self.dropped = 0

    def take(self, lines: Iterable[LogLine]) -> int:
        n = 0
        for line in lines:
            if line.seq <= self.after:
                continue
            self.after, n = line.seq, n + 1
            name = "stderr" if line.stream == "err" else "stdout"
            if self.spec.echo:
                print(line.text, file=sys.stderr if name == "stderr" else sys.stdout, flush=True)
            if self.logged < self.spec.max_log_lines:
                self.logged += 1
                self.context.log.info(f"[{name}] {line.text}")
            else:
                self.dropped += 1
        return n

    def close(self) -> None:
        if self.dropped:
            self.context.log.warning(
                f"{self.dropped} more output line(s) of titan job {self.job_id} were not forwarded "
                f"(max_log_lines={self.spec.max_log_lines}); `titan logs {self.job_id}` prints them all"
            )


def _follow(context: dg.OpExecutionContext, client: TitanClient, job_id: str, spec: _Spec) -> JobRecord:
    """Forward the job's output while it runs; return its final record. Interrupted (the run is
    terminated, the step process stopped), it cancels the job first: nothing runs on for nobody."""
    out = _Forwarder(context, job_id, spec)
    poll, next_status, said = _POLL_MIN, time.monotonic() + _STATUS_EVERY, ""
    try:
        while True:
            poll = _POLL_MIN if out.take(client.logs(job_id, after=out.after)) else min(_POLL_MAX, poll * 1.5)
            try:
                record = client.wait([job_id], timeout=poll)[job_id]
                break
            except WaitTimeout:
                pass
            if next_status and time.monotonic() >= next_status:
                said, next_status = _say_where(context, client.status(job_id), said)
    except BaseException as exc:
        if not isinstance(exc, BrokerUnavailable):  # a broker that is gone cannot be told either
            _cancel(context, client, job_id)
        raise
    out.take(client.logs(job_id, after=out.after))  # the broker has every line once the job ended
    out.close()
    return record


def _say_where(context: dg.OpExecutionContext, rec: JobRecord, said: str) -> tuple[str, float]:
    """Log where a job waits, or on which worker it started; returns what was said and when to look again
    (0: never, once it started)."""
    if rec.state is JobState.QUEUED or rec.state is JobState.PENDING:
        msg = f"titan job {rec.id} is {rec.state.value}: {rec.waiting or 'waiting for a free slot'}"
        if msg != said:
            context.log.info(msg)
        return msg, time.monotonic() + _STATUS_EVERY
    if rec.worker:
        context.log.info(f"titan job {rec.id} is {rec.state.value} on worker {rec.worker}")
    return said, 0.0


def _cancel(context: dg.OpExecutionContext, client: TitanClient, job_id: str) -> None:
    try:
        rec = client.cancel(job_id)
        context.log.warning(f"titan job {job_id} cancelled with its Dagster step ({rec.state.value})")
    except TitanError as exc:
        log.warning("could not cancel titan job %s: %s", job_id, exc)


def _outcome(context: dg.OpExecutionContext, client: TitanClient, rec: JobRecord, spec: _Spec) -> dg.Output[Any]:
    """The op's output for a job that succeeded; Failure (with the job's error) for one that did not."""
    meta: dict[str, Any] = {"titan_job_id": rec.id, "titan_worker": rec.worker or "", "titan_state": rec.state.value}
    if rec.duration is not None:
        meta["titan_duration_s"] = round(rec.duration, 3)
    if rec.state is not JobState.SUCCEEDED:
        text = f"titan job {rec.id} {rec.state.value}"
        try:
            raise_for(rec)
        except JobFailed as exc:  # JobTimeout and JobCancelled too: the message says which
            text = f"titan {exc}"
        meta["titan_error"] = rec.error or ""
        if rec.error_type:
            meta["titan_error_type"] = rec.error_type
        if rec.exit_code is not None:
            meta["titan_exit_code"] = rec.exit_code
        if rec.traceback:
            meta["titan_traceback"] = dg.MetadataValue.text(rec.traceback)
        # A job cancelled by someone (``titan cancel``) was meant to stop: no retry.
        raise dg.Failure(description=text, metadata=meta, allow_retries=rec.state is not JobState.CANCELLED)
    value = client.fetch_result(rec.result) if spec.fetch else (as_ref(rec.result) or rec.result)
    context.log.info(f"titan job {rec.id} succeeded on worker {rec.worker}")
    return dg.Output(value, output_name="result", metadata=meta)
