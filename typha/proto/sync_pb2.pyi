from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClientMessage(_message.Message):
    __slots__ = ("hello", "pong")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    hello: ClientHello
    pong: Pong
    def __init__(self, hello: _Optional[_Union[ClientHello, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("hello", "snapshot", "deltas", "status", "ping", "checksum", "reconnect", "buckets")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    RECONNECT_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    hello: ServerHello
    snapshot: SnapshotChunk
    deltas: Deltas
    status: SyncStatus
    ping: Ping
    checksum: Checksum
    reconnect: Reconnect
    buckets: BucketChunk
    def __init__(self, hello: _Optional[_Union[ServerHello, _Mapping]] = ..., snapshot: _Optional[_Union[SnapshotChunk, _Mapping]] = ..., deltas: _Optional[_Union[Deltas, _Mapping]] = ..., status: _Optional[_Union[SyncStatus, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., checksum: _Optional[_Union[Checksum, _Mapping]] = ..., reconnect: _Optional[_Union[Reconnect, _Mapping]] = ..., buckets: _Optional[_Union[BucketChunk, _Mapping]] = ...) -> None: ...

class ResumePoint(_message.Message):
    __slots__ = ("epoch", "sequence")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    epoch: str
    sequence: int
    def __init__(self, epoch: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class ClientHello(_message.Message):
    __slots__ = ("hostname", "info", "version", "syncer_type", "compressions", "resume", "features", "client_id", "digests")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SYNCER_TYPE_FIELD_NUMBER: _ClassVar[int]
    COMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    info: str
    version: str
    syncer_type: str
    compressions: _containers.RepeatedScalarFieldContainer[str]
    resume: ResumePoint
    features: _containers.RepeatedScalarFieldContainer[str]
    client_id: str
    digests: BucketDigests
    def __init__(self, hostname: _Optional[str] = ..., info: _Optional[str] = ..., version: _Optional[str] = ..., syncer_type: _Optional[str] = ..., compressions: _Optional[_Iterable[str]] = ..., resume: _Optional[_Union[ResumePoint, _Mapping]] = ..., features: _Optional[_Iterable[str]] = ..., client_id: _Optional[str] = ..., digests: _Optional[_Union[BucketDigests, _Mapping]] = ...) -> None: ...

class BucketDigests(_message.Message):
    __slots__ = ("count", "digests")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    count: int
    digests: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, count: _Optional[int] = ..., digests: _Optional[_Iterable[int]] = ...) -> None: ...

class ServerHello(_message.Message):
    __slots__ = ("version", "server_id", "epoch", "resumed", "syncer_type", "sequence", "bucket_count")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    SYNCER_TYPE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    BUCKET_COUNT_FIELD_NUMBER: _ClassVar[int]
    version: str
    server_id: str
    epoch: str
    resumed: bool
    syncer_type: str
    sequence: int
    bucket_count: int
    def __init__(self, version: _Optional[str] = ..., server_id: _Optional[str] = ..., epoch: _Optional[str] = ..., resumed: _Optional[bool] = ..., syncer_type: _Optional[str] = ..., sequence: _Optional[int] = ..., bucket_count: _Optional[int] = ...) -> None: ...

class KV(_message.Message):
    __slots__ = ("key", "value", "revision")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    revision: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., revision: _Optional[str] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("sequence", "index", "count", "compression", "data", "total_kvs")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_KVS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    index: int
    count: int
    compression: str
    data: bytes
    total_kvs: int
    def __init__(self, sequence: _Optional[int] = ..., index: _Optional[int] = ..., count: _Optional[int] = ..., compression: _Optional[str] = ..., data: _Optional[bytes] = ..., total_kvs: _Optional[int] = ...) -> None: ...

class BucketChunk(_message.Message):
    __slots__ = ("sequence", "index", "count", "buckets", "compression", "data", "digest", "key_count")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    KEY_COUNT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    index: int
    count: int
    buckets: _containers.RepeatedScalarFieldContainer[int]
    compression: str
    data: bytes
    digest: int
    key_count: int
    def __init__(self, sequence: _Optional[int] = ..., index: _Optional[int] = ..., count: _Optional[int] = ..., buckets: _Optional[_Iterable[int]] = ..., compression: _Optional[str] = ..., data: _Optional[bytes] = ..., digest: _Optional[int] = ..., key_count: _Optional[int] = ...) -> None: ...

class Deltas(_message.Message):
    __slots__ = ("kvs", "sequence")
    KVS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    kvs: _containers.RepeatedCompositeFieldContainer[KV]
    sequence: int
    def __init__(self, kvs: _Optional[_Iterable[_Union[KV, _Mapping]]] = ..., sequence: _Optional[int] = ...) -> None: ...

class SyncStatus(_message.Message):
    __slots__ = ("status", "sequence")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[SyncStatus.Status]
        WAIT_FOR_READY: _ClassVar[SyncStatus.Status]
        RESYNC: _ClassVar[SyncStatus.Status]
        IN_SYNC: _ClassVar[SyncStatus.Status]
    UNKNOWN: SyncStatus.Status
    WAIT_FOR_READY: SyncStatus.Status
    RESYNC: SyncStatus.Status
    IN_SYNC: SyncStatus.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    status: SyncStatus.Status
    sequence: int
    def __init__(self, status: _Optional[_Union[SyncStatus.Status, str]] = ..., sequence: _Optional[int] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("timestamp_ns",)
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    timestamp_ns: int
    def __init__(self, timestamp_ns: _Optional[int] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("ping_timestamp_ns",)
    PING_TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    ping_timestamp_ns: int
    def __init__(self, ping_timestamp_ns: _Optional[int] = ...) -> None: ...

class Checksum(_message.Message):
    __slots__ = ("sequence", "digest", "count")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    digest: int
    count: int
    def __init__(self, sequence: _Optional[int] = ..., digest: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class Reconnect(_message.Message):
    __slots__ = ("reason", "endpoint", "after_ms")
    REASON_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    endpoint: str
    after_ms: int
    def __init__(self, reason: _Optional[str] = ..., endpoint: _Optional[str] = ..., after_ms: _Optional[int] = ...) -> None: ...
