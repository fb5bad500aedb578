"""An agent's mirror of one syncer's KV set: reconcile, apply, journal and repair, without I/O.

The mirror holds each key's value bytes as received (for dedupe, the checksum, and to compare
snapshots without decoding), the decoded value handed to the agent, and the revision. Every change
is computed completely before the mirror is touched, so a refused message leaves it as it was.

Journals. A hello carrying bucket digests (digest-resync) describes the mirror at that moment; a
make-before-break move keeps the old stream applying deltas while the new one waits for its answer.
Each such session's journal records the entries keys had when its summary was taken, so a repair is
applied to the state the server compared with (`repair`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from typha.client.session import ProtocolError, Session
from typha.model.kv import Update
from typha.proto import sync_pb2 as pb
from typha.syncproto.checksum import kv_hash
from typha.syncproto.digests import bucket_hash, summarise
from typha.syncproto.values import UndecodableValue, unpack_value

# value bytes as received, the decoded value handed to the agent, the revision.
Entry = tuple[bytes, Any, str]


def decode(key: str, value: bytes) -> Any:
    try:
        return unpack_value(value)
    except UndecodableValue as exc:
        raise ProtocolError(f"value of {key!r} {exc}") from exc


class Mirror:
    """The KV set, its checksum digest (kept only when `verify`), and keys awaiting confirmation."""

    __slots__ = ("_journals", "digest", "entries", "unconfirmed", "verify")

    def __init__(self, verify: bool) -> None:
        self.verify = verify
        self.entries: dict[str, Entry] = {}
        self.digest = 0
        # Keys kept after a reconcile against a server not yet in sync (see reconcile).
        self.unconfirmed: set[str] = set()
        # Per session whose hello carries a summary, still waiting for its answer: each changed key's
        # entry as it was when the summary was taken (None: absent).
        self._journals: dict[Session, dict[str, Entry | None]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def items(self) -> Iterator[tuple[str, Any]]:
        return ((key, entry[1]) for key, entry in self.entries.items())

    def summary(self, count: int) -> list[int]:
        """The bucket digests a hello offers (typha.syncproto.digests)."""
        return summarise(((key, kv_hash(key, entry[0])) for key, entry in self.entries.items()), count)

    def entry_for(self, key: str, value: bytes, revision: str) -> Entry:
        """A received KV as an entry, reusing the decoded object when the bytes are unchanged."""
        current = self.entries.get(key)
        decoded = current[1] if current is not None and current[0] == value else decode(key, value)
        return (value, decoded, revision)

    # -- journals ----------------------------------------------------------------------------------

    def start_journal(self, session: Session) -> None:
        self._journals[session] = {}

    def end_journal(self, session: Session) -> None:
        self._journals.pop(session, None)

    def _journal(self, key: str, old: Entry | None) -> None:
        """Record a key's entry before its first change since each pending summary was taken."""
        for undo in self._journals.values():
            undo.setdefault(key, old)

    # -- changes -----------------------------------------------------------------------------------

    def apply_deltas(self, kvs: Iterable[pb.KV]) -> list[Update]:
        """Apply one Deltas message's KVs; the updates that changed something, in stream order."""
        mirror = self.entries
        updates: list[Update] = []
        # Changes of this message by key, so repeated keys (concatenated batches) dedupe against
        # the value the earlier part set; applied only once the whole message has decoded.
        changed: dict[str, Entry | None] = {}
        for kv in kvs:
            key, value = kv.key, kv.value
            current = changed[key] if key in changed else mirror.get(key)
            if not value:
                if current is None:
                    continue  # delete of an absent key
                changed[key] = None
                updates.append(Update(key, None, kv.revision))
                continue
            if current is not None and current[0] == value:
                continue
            decoded = decode(key, value)
            changed[key] = (value, decoded, kv.revision)
            updates.append(Update(key, decoded, kv.revision))
        if changed:
            digest = self.digest
            verify = self.verify
            journal = bool(self._journals)
            for key, entry in changed.items():
                if entry is None:
                    old = mirror.pop(key, None)
                else:
                    old = mirror.get(key)
                    mirror[key] = entry
                if journal:
                    self._journal(key, old)
                if verify:
                    if old is not None:
                        digest ^= kv_hash(key, old[0])
                    if entry is not None:
                        digest ^= kv_hash(key, entry[0])
            self.digest = digest
        if self.unconfirmed:
            # The server's stream mentioned these keys, so their fate is now the stream's.
            self.unconfirmed.difference_update(kv.key for kv in kvs)
        return updates

    def reconcile(self, snapshot: dict[str, Entry], *, delete_now: bool) -> list[Update]:
        """Replace the mirror by `snapshot`, returning the updates that turn the old into the new.

        Keys the mirror has and the snapshot lacks are deleted only if the server is known to be in
        sync. A server that has not finished its initial list sends a partial snapshot; deleting on
        it would make an agent tear down state that is still there. Like Calico's restart-aware
        clients, such keys stay (unconfirmed) until the stream mentions them, says IN_SYNC, or sends a
        Checksum that settles them (see settle_by_checksum).
        """
        mirror = self.entries
        verify = self.verify
        digest = self.digest
        updates: list[Update] = []
        new_keys = 0
        for key, entry in snapshot.items():
            old = mirror.get(key)
            if old is None:
                new_keys += 1
            elif old[0] == entry[0]:
                continue
            updates.append(Update(key, entry[1], entry[2]))
            if verify:
                if old is not None:
                    digest ^= kv_hash(key, old[0])
                digest ^= kv_hash(key, entry[0])
        self.unconfirmed = set()
        if len(mirror) > len(snapshot) - new_keys:  # some mirror keys are not in the snapshot
            missing = sorted(mirror.keys() - snapshot.keys())
            if delete_now:
                for key in missing:
                    updates.append(Update(key, None, ""))  # the deleting revision is not known
                    if verify:
                        digest ^= kv_hash(key, mirror[key][0])
            else:
                for key in missing:
                    snapshot[key] = mirror[key]
                self.unconfirmed = set(missing)
        if self._journals:
            for update in updates:
                self._journal(update.key, mirror.get(update.key))
        self.entries = snapshot
        self.digest = digest
        return updates

    def delete_unconfirmed(self) -> list[Update]:
        mirror = self.entries
        digest = self.digest
        updates = []
        for key in sorted(self.unconfirmed):
            entry = mirror.pop(key, None)
            if entry is None:
                continue
            if self._journals:
                self._journal(key, entry)
            updates.append(Update(key, None, ""))
            if self.verify:
                digest ^= kv_hash(key, entry[0])
        self.digest = digest
        self.unconfirmed = set()
        return updates

    def settle_by_checksum(self, digest: int, count: int) -> list[Update] | None:
        """Checksums are only sent by a server in sync; if its set is exactly the mirror without the
        unconfirmed keys, delete them (what a later IN_SYNC would have done) and return the updates.
        This also covers a server that never repeats IN_SYNC to a client joining after it."""
        without = self.digest
        for key in self.unconfirmed:
            without ^= kv_hash(key, self.entries[key][0])
        if digest == without and count == len(self.entries) - len(self.unconfirmed):
            return self.delete_unconfirmed()
        return None

    def repair(self, session: Session) -> list[Update]:
        """Make the mirror the server's set: the summarised mirror with the session's buckets replaced.

        Keys changed since the summary (a make-before-break move keeps the old stream applying
        deltas) are first taken back to their summarised entries: only that state is what the
        server compared with. The result must match the server's checksum, else nothing changes.
        """
        mask = session.summary_count - 1
        replaced = session.repair_buckets
        staged, undo, mirror = session.staged, self._journals.get(session, {}), self.entries
        targets: dict[str, Entry | None] = {key: undo[key] for key in undo if bucket_hash(key) & mask not in replaced}
        if replaced:
            for key in mirror:
                if bucket_hash(key) & mask in replaced:
                    targets[key] = staged.get(key)
            targets.update(staged)
        digest, count = self.digest, len(mirror)
        changes: list[tuple[str, Entry | None, Entry | None]] = []
        for key, target in targets.items():
            old = mirror.get(key)
            if old is target or (old is not None and target is not None and old[0] == target[0]):
                continue  # as a snapshot's reconcile: equal bytes keep the mirror's entry
            changes.append((key, old, target))
            if old is not None:
                digest ^= kv_hash(key, old[0])
                count -= 1
            if target is not None:
                digest ^= kv_hash(key, target[0])
                count += 1
        if (digest, count) != session.repair_check:
            raise ProtocolError(f"mirror after replacing {len(replaced)} buckets does not match the server's "
                                f"checksum ({count} keys, server {session.repair_check[1]})")
        self.end_journal(session)
        session.staged = {}
        updates = []
        journal = bool(self._journals)
        for key, old, target in sorted(changes, key=lambda change: change[0]):
            if journal:
                self._journal(key, old)
            if target is None:
                del mirror[key]
                updates.append(Update(key, None, ""))  # the deleting revision is not known
            else:
                mirror[key] = target
                updates.append(Update(key, target[1], target[2]))
        self.digest = digest
        self.unconfirmed = set()  # the checksum says the mirror is exactly the in-sync server's set
        return updates
