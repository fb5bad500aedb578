"""Kubernetes' protobuf wire format (`application/vnd.kubernetes.protobuf`) to and from JSON objects.

The format (k8s.io/apimachinery/pkg/runtime/serializer/protobuf): the four bytes `k8s\\x00`, then a
`runtime.Unknown` whose `typeMeta` names the apiVersion and kind and whose `raw` is the object's own
message from the kind's `generated.proto`. kubectl's typed generators (`kubectl create namespace`,
`deployment`, `configmap`, `secret`, `serviceaccount`, …) send this.

The mapping between a message and the JSON a real server stores follows the Go types' JSON
encoding: the field names of generated.proto are the JSON names; `meta.v1.Time` is an RFC 3339
string, `IntOrString` a number or a string, `Quantity` its string, `RawExtension` and `FieldsV1` the
embedded JSON, bytes base64. Go writes every non-pointer field on the wire, empty ones included;
empty strings, zero times and zero scalars are dropped here, as `omitempty` drops them from the
JSON, except for the scalar fields the Go types make pointers (see _POINTER_SCALARS).
"""

from __future__ import annotations

import base64
import calendar
import time
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import orjson
from google.protobuf import descriptor as _descriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from typha.testing.apiserver.k8sproto import (
    apps_v1_pb2,
    autoscaling_v1_pb2,
    autoscaling_v2_pb2,
    batch_v1_pb2,
    coordination_v1_pb2,
    core_v1_pb2,
    discovery_v1_pb2,
    networking_v1_pb2,
    policy_v1_pb2,
    rbac_v1_pb2,
    runtime_pb2,
)

CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

_META = "k8s.io.apimachinery.pkg.apis.meta.v1."
_TIME = {_META + "Time", _META + "MicroTime"}
_DURATION = _META + "Duration"
_INT_OR_STRING = "k8s.io.apimachinery.pkg.util.intstr.IntOrString"
_QUANTITY = "k8s.io.apimachinery.pkg.api.resource.Quantity"
_RAW_JSON = {"k8s.io.apimachinery.pkg.runtime.RawExtension", _META + "FieldsV1"}

_GROUPS: dict[str, tuple[ModuleType, str]] = {
    "v1": (core_v1_pb2, "k8s.io.api.core.v1"),
    "apps/v1": (apps_v1_pb2, "k8s.io.api.apps.v1"),
    "rbac.authorization.k8s.io/v1": (rbac_v1_pb2, "k8s.io.api.rbac.v1"),
    "policy/v1": (policy_v1_pb2, "k8s.io.api.policy.v1"),
    "networking.k8s.io/v1": (networking_v1_pb2, "k8s.io.api.networking.v1"),
    "coordination.k8s.io/v1": (coordination_v1_pb2, "k8s.io.api.coordination.v1"),
    "batch/v1": (batch_v1_pb2, "k8s.io.api.batch.v1"),
    "discovery.k8s.io/v1": (discovery_v1_pb2, "k8s.io.api.discovery.v1"),
    "autoscaling/v1": (autoscaling_v1_pb2, "k8s.io.api.autoscaling.v1"),
    "autoscaling/v2": (autoscaling_v2_pb2, "k8s.io.api.autoscaling.v2"),
}


# The generated modules are untyped (protoc's builder fills their namespace at import time).
_UNKNOWN: Any = runtime_pb2.Unknown  # type: ignore[attr-defined]


# Scalar fields that are pointers in the Go types: their zero value is meaningful and kept. Every
# other scalar is a plain Go field, written on the wire even when zero and dropped from the JSON by
# `omitempty` (`hostPort: 0`, `nodePort: 0`). generated.proto does not say which is which.
_POINTER_SCALARS = frozenset(
    {
        "replicas", "revisionHistoryLimit", "progressDeadlineSeconds", "paused",
        "automountServiceAccountToken", "terminationGracePeriodSeconds", "activeDeadlineSeconds",
        "runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "readOnlyRootFilesystem", "privileged",
        "allowPrivilegeEscalation", "hostUsers", "enableServiceLinks", "shareProcessNamespace",
        "setHostnameAsFQDN", "priority", "immutable", "optional", "defaultMode", "mode",
        "backoffLimit", "parallelism", "completions", "suspend", "ttlSecondsAfterFinished",
        "startingDeadlineSeconds", "successfulJobsHistoryLimit", "failedJobsHistoryLimit",
        "expirationSeconds", "leaseDurationSeconds", "leaseTransitions", "endPort",
        "allocateLoadBalancerNodePorts", "publishNotReadyAddresses", "ready", "serving", "terminating",
    }
)


class ProtoError(ValueError):
    """A body that is not a protobuf object the emulator can read (answered with 415)."""


def wants_protobuf(accept: str) -> bool:
    """True when the client's preferred media type is Kubernetes protobuf."""
    first = accept.split(",", 1)[0].split(";", 1)[0].strip()
    return first == CONTENT_TYPE


def supported_kinds() -> list[tuple[str, str]]:
    """Every (apiVersion, kind) with a protobuf schema here (a top-level object: it has metadata)."""
    out = []
    for api_version, (module, _) in _GROUPS.items():
        for name, desc in module.DESCRIPTOR.message_types_by_name.items():
            if "metadata" in desc.fields_by_name and not name.endswith("List"):
                out.append((api_version, name))
    return out


def _descriptor_for(api_version: str, kind: str) -> _descriptor.Descriptor | None:
    group = _GROUPS.get(api_version)
    if group is None:
        return None
    desc = group[0].DESCRIPTOR.message_types_by_name.get(kind)
    if desc is None or "metadata" not in desc.fields_by_name:
        return None
    return desc


# ---- protobuf -> JSON ------------------------------------------------------------------------


def _format_time(seconds: int, nanos: int, micro: bool) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{nanos // 1000:06d}Z" if micro else f"{stamp}Z"


def _format_duration(ns: int) -> str:
    """Go's time.Duration.String for whole seconds and above, the common case in API objects."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    seconds = rest / 1e9
    text = f"{seconds:g}s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return sign + text


def _scalar_to_json(field: _descriptor.FieldDescriptor, value: Any) -> Any:
    if field.type == _descriptor.FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value


def _message_to_json(msg: Message) -> Any:
    name = msg.DESCRIPTOR.full_name
    if name in _TIME:
        seconds, nanos = msg.seconds, msg.nanos  # type: ignore[attr-defined]
        return None if not seconds and not nanos else _format_time(seconds, nanos, name.endswith("MicroTime"))
    if name == _DURATION:
        return _format_duration(msg.duration)  # type: ignore[attr-defined]
    if name == _INT_OR_STRING:
        return msg.strVal if msg.type == 1 else msg.intVal  # type: ignore[attr-defined]
    if name == _QUANTITY:
        return msg.string  # type: ignore[attr-defined]
    if name in _RAW_JSON:
        raw = msg.raw  # type: ignore[attr-defined]
        try:
            return orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            raise ProtoError(f"{name} does not hold JSON") from None
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            converted: Any = {
                k: (_message_to_json(v) if value_field.message_type is not None else _scalar_to_json(value_field, v))
                for k, v in value.items()
            }
        elif field.is_repeated:
            converted = [
                _message_to_json(v) if field.message_type is not None else _scalar_to_json(field, v) for v in value
            ]
        elif field.message_type is not None:
            converted = _message_to_json(value)
            if converted is None:
                continue
        else:
            converted = _scalar_to_json(field, value)
            if converted == "" or (converted in (0, False) and field.name not in _POINTER_SCALARS):
                continue
        out[field.name] = converted
    return out


def decode(body: bytes) -> dict[str, Any]:
    """The JSON object a protobuf request body carries; ProtoError if it is not one."""
    if not body.startswith(MAGIC):
        raise ProtoError(
            "the body of the request was in an unknown format: it does not start with the protobuf magic number"
        )
    unknown = _UNKNOWN()
    try:
        unknown.ParseFromString(body[len(MAGIC) :])
    except DecodeError as err:
        raise ProtoError(f"the body of the request was in an unknown format: {err}") from None
    if unknown.contentEncoding:
        raise ProtoError(f"unsupported content encoding {unknown.contentEncoding!r}")
    api_version, kind = unknown.typeMeta.apiVersion, unknown.typeMeta.kind
    desc = _descriptor_for(api_version, kind)
    if desc is None:
        raise ProtoError(f"no kind {kind!r} is registered for version {api_version!r} in protobuf")
    msg = GetMessageClass(desc)()
    try:
        msg.ParseFromString(unknown.raw)
    except DecodeError as err:
        raise ProtoError(f"the {kind} in the body of the request could not be decoded: {err}") from None
    obj = _message_to_json(msg)
    return {"apiVersion": api_version, "kind": kind, **obj}


# ---- JSON -> protobuf ------------------------------------------------------------------------


def _parse_time(text: str) -> tuple[int, int]:
    base, _, frac = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    nanos = int((frac + "000000000")[:9]) if frac else 0
    return seconds, nanos


def _scalar_from_json(field: Any, value: Any) -> Any:
    if field.type == _descriptor.FieldDescriptor.TYPE_BYTES:
        return base64.b64decode(value) if isinstance(value, str) else b""
    return value


def _fill(msg: Message, value: Any) -> None:
    name = msg.DESCRIPTOR.full_name
    if name in _TIME:
        msg.seconds, msg.nanos = _parse_time(value)  # type: ignore[attr-defined]
        return
    if name == _INT_OR_STRING:
        if isinstance(value, str):
            msg.type, msg.strVal = 1, value  # type: ignore[attr-defined]
        else:
            msg.type, msg.intVal = 0, int(value)  # type: ignore[attr-defined]
        return
    if name == _QUANTITY:
        msg.string = str(value)  # type: ignore[attr-defined]
        return
    if name in _RAW_JSON:
        msg.raw = orjson.dumps(value)  # type: ignore[attr-defined]
        return
    if name == _DURATION or not isinstance(value, dict):
        return  # durations are not written back; a shape the schema does not expect is left out
    fields = msg.DESCRIPTOR.fields_by_name
    for key, child in value.items():
        field = fields.get(key)
        if field is None or child is None:
            continue  # what the schema does not know is not encoded (as a real server's older schema)
        target = getattr(msg, key)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for k, v in (child or {}).items():
                if value_field.message_type is not None:
                    _fill(target[k], v)
                else:
                    target[k] = _scalar_from_json(value_field, v)
        elif field.is_repeated:
            for item in _as_list(child):
                if field.message_type is not None:
                    _fill(target.add(), item)
                else:
                    target.append(_scalar_from_json(field, item))
        elif field.message_type is not None:
            sub = target
            sub.SetInParent()
            _fill(sub, child)
        else:
            setattr(msg, key, _scalar_from_json(field, child))


def _as_list(value: Any) -> Iterable[Any]:
    return value if isinstance(value, list) else []


def encode(obj: dict[str, Any]) -> bytes | None:
    """`obj` in Kubernetes protobuf, or None when its kind has no schema here."""
    api_version, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
    desc = _descriptor_for(api_version, kind)
    if desc is None:
        return None
    msg = GetMessageClass(desc)()
    try:
        _fill(msg, {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")})
    except (TypeError, ValueError, AttributeError):
        return None  # a value the schema types differently: the caller answers in JSON instead
    unknown = _UNKNOWN(raw=msg.SerializeToString())
    unknown.typeMeta.apiVersion = api_version
    unknown.typeMeta.kind = kind
    return MAGIC + unknown.SerializeToString()
