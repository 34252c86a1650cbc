"""CURVE encryption and authentication: key files, socket set-up, and the broker's allow-lists (ZAP).

``titan keys generate DIR`` writes three key pairs (ZeroMQ certificate files, as ``zmq.auth``
writes them) and the allow-lists the broker reads::

    DIR/broker.key  broker.key_secret      the broker's pair; every peer needs broker.key
    DIR/client.key  client.key_secret      for clients, the TUI, and jobs that use the client
    DIR/worker.key  worker.key_secret      for workers
    DIR/allowed/clients/*.key              public keys allowed to act as clients
    DIR/allowed/workers/*.key              public keys allowed to register as workers

With ``--keys DIR`` (or ``TITAN_KEYS``) every socket is CURVE-encrypted, and the broker checks each
peer's public key against the allow-lists through a ZAP handler: the back socket admits worker
keys only, the events socket client keys only, and the front socket both, where a worker key may
only ask for the broker's ports (HELLO). A peer with an unknown key, or without encryption, gets
nothing: its handshake fails, and the broker logs it. To admit another client or worker, copy its
public ``.key`` file into the matching ``allowed`` folder and restart the broker.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from titan_zmq.errors import ConfigError

log = logging.getLogger(__name__)

PAIRS = ("broker", "client", "worker")
ROLES = {"client": "clients", "worker": "workers"}  # role -> its allow-list folder under allowed/
DOMAINS = {"front": ("client", "worker"), "back": ("worker",), "events": ("client",),
           "objects": ("client", "worker")}  # who each socket admits (objects: the relay)


def generate(folder: str | os.PathLike[str], force: bool = False) -> list[Path]:
    """Write the three key pairs and the allow-lists into ``folder``; returns the files written."""
    root = Path(folder)
    existing = [root / f"{name}.key_secret" for name in PAIRS if (root / f"{name}.key_secret").exists()]
    if existing and not force:
        raise ConfigError(f"{existing[0]} already exists; keys are not overwritten (use --force to replace them)")
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in PAIRS:
        public, secret = zmq.auth.create_certificates(str(root), name)
        os.chmod(secret, 0o600)
        written += [Path(public), Path(secret)]
    for role, sub in ROLES.items():
        allowed = root / "allowed" / sub
        allowed.mkdir(parents=True, exist_ok=True)
        written.append(Path(shutil.copy(root / f"{role}.key", allowed / f"{role}.key")))
    return written


class Keys:
    """The key folder one process uses (``--keys DIR`` / ``TITAN_KEYS``)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.root = Path(folder)
        broker = self.root / "broker.key"
        if not broker.exists():
            raise ConfigError(f"{broker} not found: --keys needs a folder written by 'titan keys generate DIR' "
                              "(every peer needs the broker's public key, broker.key)")  # fmt: skip
        self.broker_public, _ = zmq.auth.load_certificate(str(broker))

    @classmethod
    def find(cls, explicit: str | os.PathLike[str] | None = None) -> Keys | None:
        """The keys named by ``explicit``, else by ``$TITAN_KEYS``; None when neither is set."""
        folder = explicit or os.environ.get("TITAN_KEYS")
        return cls(folder) if folder else None

    def pair(self, name: str) -> tuple[bytes, bytes]:
        path = self.root / f"{name}.key_secret"
        if not path.exists():
            raise ConfigError(f"{path} not found: this process needs the {name} key pair; copy {name}.key_secret "
                              f"(and {name}.key) from the folder 'titan keys generate' wrote")  # fmt: skip
        public, secret = zmq.auth.load_certificate(str(path))
        if secret is None:
            raise ConfigError(f"{path} holds no secret key")
        return public, secret

    def has(self, name: str) -> bool:
        return (self.root / f"{name}.key_secret").exists()

    def connect(self, sock: zmq.Socket[Any], role: str) -> None:
        """Make ``sock`` a CURVE client of the broker with ``role``'s key pair (before connecting it)."""
        public, secret = self.pair(role)
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.curve_serverkey = self.broker_public

    def serve(self, sock: zmq.Socket[Any], domain: str) -> None:
        """Make ``sock`` the broker's CURVE server for ``domain`` (front, back or events), before binding it."""
        public, secret = self.pair("broker")
        sock.curve_server = True
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.zap_domain = domain.encode()

    def allowed(self, role: str) -> dict[bytes, bool]:
        """Public keys (Z85) in ``allowed/<role>s/``."""
        folder = self.root / "allowed" / ROLES[role]
        return zmq.auth.load_certificates(str(folder)) if folder.is_dir() else {}


class _ZapLog(logging.LoggerAdapter):  # type: ignore[type-arg,unused-ignore]
    """pyzmq's authenticator logs every decision at debug; a refused peer deserves a warning."""

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = f"{msg} {args}"
        if text.startswith("DENIED"):
            self.log(logging.WARNING, "peer refused: %s", text)
        else:
            self.log(logging.DEBUG, "%s", text)


class Guard:
    """The broker's ZAP handler: which public keys each socket admits, and the role of a key."""

    def __init__(self, ctx: zmq.Context[Any], keys: Keys) -> None:
        self.keys = keys
        by_role = {role: keys.allowed(role) for role in ROLES}
        if not any(by_role.values()):
            raise ConfigError(f"no public keys in {keys.root / 'allowed'}: nobody could connect; run "
                              "'titan keys generate DIR' or copy clients' and workers' .key files there")  # fmt: skip
        from zmq.auth.thread import ThreadAuthenticator  # here: it imports asyncio, which clients need not pay for

        self.workers = {k.decode() for k in by_role["worker"]}
        self.clients = {k.decode() for k in by_role["client"]}
        self.auth = ThreadAuthenticator(ctx, log=_ZapLog(logging.getLogger(__name__ + ".zap"), {}))  # type: ignore[arg-type,unused-ignore]
        self.auth.start()
        for domain, roles in DOMAINS.items():  # what configure_curve(domain, folder) sets, from two folders
            self.auth.certs[domain] = {k: v for role in roles for k, v in by_role[role].items()}
        log.info("CURVE on: %d client key(s), %d worker key(s) allowed", len(self.clients), len(self.workers))

    def is_worker_only(self, user_id: str | None) -> bool:
        """Whether a front-socket peer authenticated with a worker key (and no client key)."""
        return user_id is not None and user_id in self.workers and user_id not in self.clients

    def stop(self) -> None:
        self.auth.stop()


HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                      | zmq.EVENT_HANDSHAKE_FAILED_AUTH)  # fmt: skip


def describe_failure(event: Any, socket_name: str) -> str:
    """A log line for a monitor event of a refused handshake."""
    kind = event.get("event")
    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        why = "its key is not on this socket's allow-list"
    elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        why = "it does not speak CURVE (no --keys?) or sent a broken handshake"
    else:
        why = "the handshake failed: a peer without encryption (no --keys?) or with a wrong broker key"
    return f"a peer was refused on the {socket_name} socket: {why}"
