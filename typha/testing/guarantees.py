"""The guarantee checker: did every client see what docs/architecture.md §5 promises, given what the API committed?

It records both ends of the pipeline and judges them afterwards, so a test (or `bench soak`) only
has to wire it in and ask for a verdict at the end:

    checker = GuaranteeChecker().attach(api)            # before or after objects exist: both are recorded
    await daemon.start(); checker.watch_daemon(daemon)  # optional: the server's status timeline
    record = checker.client("node-1/felix", "felix")    # a SyncCallbacks; pass inner=... to chain yours
    client = AsyncSyncClient(endpoints, "felix", hostname="node-1", callbacks=record)
    ...                                                 # churn, faults, convergence wait
    record.set_final(digest=client.core.digest, mirror=client.core.to_dict())
    verdict = checker.verdict(api.objects(), server_digests={"felix": daemon.caches["felix"].digest})
    assert verdict.ok, verdict                          # str(verdict) lists every violation found

What `verdict()` checks, per client (values are compared as the msgpack bytes the server sends):
- **final state**: the mirror built from the updates the client delivered equals the syncer's
  conversion of the API's objects (`convert_objects`); a key missing or stale is a lost update;
- **no duplicates, no per-key reordering**: each key's delivered values (a deletion is None) are a
  subsequence of the values the syncer produces for that key when the API's commits are replayed in
  commit order, and no value is delivered twice in a row. Keys of content-keyed kinds (IP pools,
  blocks: several objects may claim one key) are checked more loosely: every value delivered must be
  one some claimant produced, because which claimant shows through in between depends on the order
  a re-list reads objects in, which no client can rely on;
- **in-sync only after the initial lists**: every IN_SYNC the server announced (`watch_daemon` or
  `record_server_status`) was announced with every reflector of the syncer listed, and no client
  reported IN_SYNC at a time when the latest server status of its syncer was not IN_SYNC;
- **checksums**: the client's own digest (`set_final`), the server's digest and the digest of the
  expected KV set are all equal, and the client's own mirror equals the one its updates built.

Cost: every commit and every delivered value is kept until the verdict, so a long soak should
record a handful of clients (the others can still be compared by digest).

Histories can be fed by hand (`record_commit`, `ClientRecord.on_updates`, ...) for the checker's own
tests or for clients in another process: `ClientRecord` is a plain picklable object.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from typha.kube.reflector import Event, EventType
from typha.model.kv import SyncStatus, Update
from typha.model.resources import Resource, by_key, for_object
from typha.source.datastore import CONTENT_KEYED, SYNCER_TYPES, Syncer, convert_objects
from typha.syncproto.checksum import digest_of
from typha.syncproto.values import pack_value

MAX_REPORTED_PER_CLIENT = 5  # violations listed per client and kind before "... and N more"


def pack(value: Any) -> bytes | None:
    """A value as the server encodes it (typha.syncproto.values.pack_value), None for a deletion."""
    return None if value is None else pack_value(value)


@dataclass(slots=True)
class Commit:
    rv: int
    resource: Resource
    deleted: bool
    obj: dict[str, Any]


class ClientRecord:
    """Everything one client delivered: per key the values in order, statuses with times, and its
    final digest. Use it as the client's callbacks (it forwards to `inner` if given)."""

    def __init__(self, name: str, syncer_type: str, inner: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.syncer_type = syncer_type
        self.values: dict[str, list[bytes | None]] = {}
        self.mirror: dict[str, bytes] = {}
        self.statuses: list[tuple[float, SyncStatus]] = []
        self.final_digest: int | None = None
        self.final_mirror: dict[str, bytes] | None = None
        self._inner = inner
        self._clock = clock
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = {k: getattr(self, k) for k in ("name", "syncer_type", "values", "mirror", "statuses",
                                                "final_digest", "final_mirror")}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"], state["syncer_type"])  # type: ignore[misc]
        for key, value in state.items():
            setattr(self, key, value)

    def on_updates(self, updates: list[Update]) -> None:
        with self._lock:
            for update in updates:
                self.record_value(update.key, pack(update.value))
        if self._inner is not None:
            self._inner.on_updates(updates)

    def record_value(self, key: str, value: bytes | None) -> None:
        """One delivered update as bytes (None = deleted); for clients that never decode values."""
        self.values.setdefault(key, []).append(value)
        if value is None:
            self.mirror.pop(key, None)
        else:
            self.mirror[key] = value

    def on_status(self, status: SyncStatus) -> None:
        with self._lock:
            self.statuses.append((self._clock(), status))
        if self._inner is not None:
            self._inner.on_status(status)

    def set_final(self, *, digest: int | None = None, mirror: Mapping[str, Any] | None = None) -> None:
        """The client's own view at the end (e.g. `client.core.digest`, `client.core.to_dict()`)."""
        self.final_digest = digest
        if mirror is not None:
            self.final_mirror = {key: pack(value) for key, value in mirror.items()}  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class ServerStatus:
    time: float
    syncer_type: str
    status: SyncStatus
    lists_complete: bool
    server: str


@dataclass
class Verdict:
    clients: int
    keys: dict[str, int]  # syncer type -> keys expected at the end
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        head = (f"guarantees {'hold' if self.ok else 'VIOLATED'} for {self.clients} clients "
                f"({', '.join(f'{t}: {n} keys' for t, n in self.keys.items())})")
        lines = [head, *(f"  FAIL {f}" for f in self.failures), *(f"  note {n}" for n in self.notes)]
        return "\n".join(lines)


class _Oracle:
    """One syncer type's expected history: the commits replayed through a fresh Syncer."""

    def __init__(self, syncer_type: str, commits: Iterable[Commit]) -> None:
        self.sequences: dict[str, list[bytes | None]] = {}
        self.loose: dict[str, set[bytes]] = {}  # content-keyed keys: every value any claimant produced
        current: dict[str, bytes] = {}
        sequences = self.sequences

        class Collect:
            def on_updates(self, updates: list[Update]) -> None:
                for update in updates:
                    value = pack(update.value)
                    sequences.setdefault(update.key, []).append(value)
                    if value is None:
                        current.pop(update.key, None)
                    else:
                        current[update.key] = value

            def on_status(self, status: SyncStatus) -> None:
                pass

        syncer = Syncer(syncer_type, Collect())
        for commit in commits:
            converter = syncer.converters.get(commit.resource.key)
            if converter is None:
                continue
            if commit.resource.key in CONTENT_KEYED and not commit.deleted:
                try:
                    produced = converter(commit.obj)
                except Exception:
                    produced = []  # the syncer withdraws an invalid object's keys, as replayed below
                for key, value in produced:
                    self.loose.setdefault(key, set()).add(pack(value))  # type: ignore[arg-type]
            event = Event(EventType.DELETE if commit.deleted else EventType.SET, commit.obj)
            syncer.on_events(commit.resource, [event])
        self.final = current


class GuaranteeChecker:
    """Records the API's commits and each client's deliveries; `verdict()` judges them (module doc)."""

    def __init__(self, syncer_types: Iterable[str] = SYNCER_TYPES, clock: Callable[[], float] = time.monotonic):
        self.syncer_types = tuple(syncer_types)
        self.clock = clock
        self.commits: list[Commit] = []
        self.clients: list[ClientRecord] = []
        self.server_statuses: list[ServerStatus] = []
        self._lock = threading.Lock()
        self._servers = 0

    # -- recording ---------------------------------------------------------------------------------

    def attach(self, api: Any) -> GuaranteeChecker:
        """Record every object `api` (a KubeAPIEmulator) holds now and every write from now on."""
        initial = api.record_commits(self._on_commit)
        with self._lock:
            existing = [Commit(s.rv, for_object(s.obj["apiVersion"], s.obj["kind"]), False, s.obj) for s in initial]
            existing.sort(key=lambda c: c.rv)
            self.commits[:0] = existing
        return self

    def _on_commit(self, event: Any) -> None:
        # Called under the emulator's store lock: keep references only (stored objects are immutable).
        with self._lock:
            self.commits.append(Commit(event.rv, event.resource, event.type == "DELETED", event.stored.obj))

    def record_commit(self, resource_key: str, obj: dict[str, Any], *, deleted: bool = False,
                      rv: int | None = None) -> None:
        """A commit by hand (objects need metadata.name, and namespace for namespaced kinds)."""
        with self._lock:
            rv = rv if rv is not None else (self.commits[-1].rv + 1 if self.commits else 1)
            self.commits.append(Commit(rv, by_key(resource_key), deleted, obj))

    def client(self, name: str, syncer_type: str, inner: Any = None) -> ClientRecord:
        record = ClientRecord(name, syncer_type, inner, self.clock)
        self.add_client(record)
        return record

    def add_client(self, record: ClientRecord) -> None:
        """A record made elsewhere (e.g. in a load-client process and sent back)."""
        with self._lock:
            self.clients.append(record)

    def record_server_status(self, syncer_type: str, status: SyncStatus, *, lists_complete: bool,
                             server: str = "", at: float | None = None) -> None:
        with self._lock:
            self.server_statuses.append(
                ServerStatus(self.clock() if at is None else at, syncer_type, status, lists_complete, server))

    def watch_daemon(self, daemon: Any) -> None:
        """Follow a started TyphaDaemon's cache statuses, noting whether every reflector the syncer
        needs had finished its initial list at the moment each status was announced."""
        self._servers += 1
        server = f"daemon-{self._servers}"
        for syncer_type, cache in daemon.caches.items():
            def on_status(status: SyncStatus, syncer_type: str = syncer_type) -> None:
                self.record_server_status(syncer_type, status, lists_complete=self._listed(daemon, syncer_type),
                                          server=server)

            cache.status_listeners.append(on_status)
            self.record_server_status(syncer_type, cache.status, lists_complete=self._listed(daemon, syncer_type),
                                      server=server)

    @staticmethod
    def _listed(daemon: Any, syncer_type: str) -> bool:
        datastore = daemon.datastore
        if datastore is None:
            return True  # fed by an upstream typha: its in-sync is the upstream's, checked there
        syncer = next(s for s in datastore.syncers if s.syncer_type == syncer_type)
        needed = {r.key for r in syncer.resources}
        return all(r.synced for r in datastore.reflectors if r.resource.key in needed)

    # -- judging -----------------------------------------------------------------------------------

    def verdict(self, final_objects: Iterable[dict[str, Any]] | None = None,
                server_digests: Mapping[str, int] | None = None) -> Verdict:
        """Judge everything recorded so far. `final_objects` (api.objects()) cross-checks the record
        of commits against the API's own state; `server_digests` adds the server's checksums."""
        with self._lock:
            commits = sorted(self.commits, key=lambda c: c.rv)
            clients = list(self.clients)
            server_statuses = sorted(self.server_statuses, key=lambda s: s.time)
        used = sorted({c.syncer_type for c in clients} | set(server_digests or {}))
        oracles = {t: _Oracle(t, commits) for t in used}
        verdict = Verdict(len(clients), {t: len(o.final) for t, o in oracles.items()})
        fail = verdict.failures.append
        if final_objects is not None:
            objects = list(final_objects)
            for syncer_type, oracle in oracles.items():
                want = {k: pack(v) for k, v in convert_objects(syncer_type, objects).items()}
                if want != oracle.final:
                    fail(f"{syncer_type}: the recorded commits do not replay to the API's final state "
                         f"({_diff_summary(oracle.final, want)}): the checker missed writes")
        expected_digests = {t: digest_of(o.final.items()) for t, o in oracles.items()}
        for syncer_type, digest in (server_digests or {}).items():
            if digest != expected_digests[syncer_type]:
                fail(f"{syncer_type}: server checksum {digest:#x} != checksum of the expected KV set "
                     f"{expected_digests[syncer_type]:#x}")
        self._check_server_statuses(server_statuses, fail)
        for record in clients:
            self._check_client(record, oracles[record.syncer_type], expected_digests[record.syncer_type],
                               server_statuses, verdict)
        if not server_statuses:
            verdict.notes.append("no server status timeline recorded: in-sync ordering checked for clients only")
        return verdict

    @staticmethod
    def _check_server_statuses(statuses: list[ServerStatus], fail: Callable[[str], None]) -> None:
        for entry in statuses:
            if entry.status is SyncStatus.IN_SYNC and not entry.lists_complete:
                fail(f"{entry.server} announced {entry.syncer_type} IN_SYNC before every initial list completed")

    def _check_client(self, record: ClientRecord, oracle: _Oracle, expected_digest: int,
                      server_statuses: list[ServerStatus], verdict: Verdict) -> None:
        problems: dict[str, list[str]] = {}

        def problem(kind: str, text: str) -> None:
            problems.setdefault(kind, []).append(text)

        # Final state: lost updates (missing or stale keys) and keys that should be gone.
        want = oracle.final
        got = record.mirror
        for key in sorted(want.keys() | got.keys()):
            if want.get(key) != got.get(key):
                if key not in got:
                    problem("lost", f"{key}: never received its final value (absent)")
                elif key not in want:
                    problem("lost", f"{key}: still present, the API deleted it (lost delete)")
                else:
                    problem("lost", f"{key}: ends at {_short(got[key])}, the API's is {_short(want[key])}")
        # Per-key history: duplicates and reordering.
        for key, received in record.values.items():
            for i in range(1, len(received)):
                if received[i] == received[i - 1]:
                    what = "deletion" if received[i] is None else f"value {_short(received[i])}"
                    problem("duplicate", f"{key}: {what} delivered twice in a row (updates {i - 1} and {i})")
            if key in oracle.loose:
                allowed = oracle.loose[key]
                for value in received:
                    if value is not None and value not in allowed:
                        problem("reordered", f"{key}: delivered {_short(value)}, which no object ever produced")
                continue
            committed = oracle.sequences.get(key, [])
            position = _subsequence_break(received, committed)
            if position is not None:
                value = received[position]
                if value is not None and value not in committed:
                    problem("reordered", f"{key}: delivered {_short(value)}, which the API never committed")
                else:
                    problem("reordered", f"{key}: update {position} ({_short(value)}) is out of commit order: "
                                         f"received {[_short(v) for v in received]}, "
                                         f"committed {[_short(v) for v in committed]}")
        # In-sync only after the server was in sync (whose in-sync was checked against the lists).
        for at, status in record.statuses:
            if status is not SyncStatus.IN_SYNC:
                continue
            latest = None
            for entry in server_statuses:
                if entry.syncer_type != record.syncer_type or entry.time > at:
                    continue
                latest = entry
            if server_statuses and (latest is None or latest.status is not SyncStatus.IN_SYNC):
                state = "no status yet" if latest is None else latest.status.value
                problem("early-in-sync", f"reported IN_SYNC while the server's {record.syncer_type} syncer was "
                                         f"{state}")
        if not record.statuses or record.statuses[-1][1] is not SyncStatus.IN_SYNC:
            last = record.statuses[-1][1].value if record.statuses else "none"
            problem("in-sync", f"not in sync at the end (last status: {last})")
        # Checksums.
        if record.final_digest is not None and record.final_digest != expected_digest:
            problem("checksum", f"client digest {record.final_digest:#x} != expected {expected_digest:#x}")
        if record.final_mirror is not None and record.final_mirror != record.mirror:
            problem("checksum", "the client's own mirror differs from what its delivered updates add up to "
                                f"({_diff_summary(record.final_mirror, record.mirror)})")
        for kind, texts in problems.items():
            shown = texts[:MAX_REPORTED_PER_CLIENT]
            more = f" ... and {len(texts) - len(shown)} more" if len(texts) > len(shown) else ""
            verdict.failures.append(f"{record.name} ({record.syncer_type}) {kind}: " + "; ".join(shown) + more)


def _subsequence_break(received: list[bytes | None], committed: list[bytes | None]) -> int | None:
    """Index of the first received value that cannot be matched, in order, against `committed`; None
    if `received` is a subsequence. Greedy earliest matching decides subsequence membership exactly."""
    j = 0
    for i, value in enumerate(received):
        while j < len(committed) and committed[j] != value:
            j += 1
        if j == len(committed):
            return i
        j += 1
    return None


def _short(value: bytes | None) -> str:
    if value is None:
        return "<deleted>"
    text = repr(msgpack.unpackb(value, raw=False))
    return text if len(text) <= 80 else text[:77] + "..."


def _diff_summary(got: Mapping[str, Any], want: Mapping[str, Any]) -> str:
    missing = sorted(want.keys() - got.keys())
    extra = sorted(got.keys() - want.keys())
    changed = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
    parts = [f"{name} {len(keys)} e.g. {keys[0]}" for name, keys in
             (("missing", missing), ("extra", extra), ("changed", changed)) if keys]
    return ", ".join(parts) or "no difference"


__all__ = ["ClientRecord", "Commit", "GuaranteeChecker", "ServerStatus", "Verdict", "pack"]
