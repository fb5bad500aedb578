"""typha.syncproto is the one home of the wire contract: nothing else spells its facts.

Every module of typha, felix_client, confd_client and bench outside typha/syncproto (and the generated
typha/proto) is parsed, not imported, and must not contain the Sync method path or service name, a
feature flag as a string, or the checksum and bucket math. A module that needs one imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from typha.proto import sync_pb2 as pb
from typha.syncproto import names

REPO = Path(__file__).resolve().parents[2]
TREES = ("typha", "felix_client", "confd_client", "bench")
HOME = (REPO / "typha" / "syncproto", REPO / "typha" / "proto")

FEATURES = frozenset(names.KNOWN_FEATURES)
# "checksum" and "reconnect" are also ServerMessage payload kinds and everyday words (a log's problem
# category): as plain strings they count as feature flags only where a feature list is made or read.
WORDS = FEATURES & frozenset(pb.ServerMessage.DESCRIPTOR.fields_by_name)
# The contract's functions: a definition of one of these names elsewhere is a second copy of its math.
MATH = frozenset({"kv_hash", "digest_of", "bucket_hash", "bucket_count_for", "split_frames", "read_varint",
                  "encode_varint"})


def sources() -> list[Path]:
    return [path for tree in TREES for path in sorted((REPO / tree).rglob("*.py"))
            if not any(path.is_relative_to(home) for home in HOME)]


def spelled_facts(text: str, name: str) -> list[str]:
    """What `text` (the module `name`) spells of the contract, one line each."""
    found = []
    if names.SERVICE_NAME in text:
        line = text[: text.index(names.SERVICE_NAME)].count("\n") + 1
        found.append(f"{name}:{line}: the Sync service name or method path {names.SYNC_METHOD!r}")
    tree = ast.parse(text, name)
    # ids of constants in a feature context: a list or set literal, FEATURE_X = …, features=, supports(), in
    as_feature = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            as_feature.update(id(element) for element in node.elts)
        elif (isinstance(node, ast.Assign) and any("FEATURE" in ast.unparse(t).upper() for t in node.targets)) or (
                isinstance(node, ast.keyword) and node.arg == "features"):
            as_feature.add(id(node.value))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "supports":
            as_feature.update(id(arg) for arg in node.args)
        elif isinstance(node, ast.Compare) and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops):
            as_feature.add(id(node.left))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and node.value in FEATURES
                and (node.value not in WORDS or id(node) in as_feature)):
            found.append(f"{name}:{node.lineno}: the feature flag {node.value!r}")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in MATH:
            found.append(f"{name}:{node.lineno}: a copy of typha.syncproto's {node.name}()")
        elif isinstance(node, ast.Call):
            callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            eight_bytes = any(k.arg == "digest_size" and isinstance(k.value, ast.Constant) and k.value.value == 8
                              for k in node.keywords)
            if callee == "blake2b" and eight_bytes:
                found.append(f"{name}:{node.lineno}: the checksum's per-key hash (BLAKE2b-64)")
            elif callee == "crc32":
                found.append(f"{name}:{node.lineno}: the digests' bucket hash (CRC-32)")
    return found


def test_no_module_outside_the_contract_spells_its_facts():
    found = [fact for path in sources() for fact in spelled_facts(path.read_text(), str(path.relative_to(REPO)))]
    assert found == [], "import these from typha.syncproto instead:\n" + "\n".join(found)


def test_the_scan_covers_every_tree():
    scanned = {path.relative_to(REPO).parts[0] for path in sources()}
    assert scanned == set(TREES)


@pytest.mark.parametrize(
    ("text", "fact"),
    [
        ('CALL = "/typha.v1.Sync/Sync"\n', "service name or method path"),
        ('FEATURES = ["exact-crumbs"]\n', "feature flag 'exact-crumbs'"),
        ('hello = Hello(features=["reconnect"])\n', "feature flag 'reconnect'"),
        ("def kv_hash(key, value):\n    return 0\n", "copy of typha.syncproto's kv_hash()"),
        ("h = hashlib.blake2b(data, digest_size=8)\n", "BLAKE2b-64"),
        ("bucket = zlib.crc32(key) & 1023\n", "CRC-32"),
    ],
)
def test_each_kind_of_fact_is_caught(text, fact):
    found = spelled_facts(text, "example.py")
    assert len(found) == 1
    assert fact in found[0]


def test_payload_kinds_and_plain_words_are_not_features():
    text = ('if message.WhichOneof("payload") == "checksum":\n    pass\nelif kind == "reconnect":\n    pass\n'
            'problem("checksum", "the digests differ")\n')
    assert spelled_facts(text, "example.py") == []


@pytest.mark.parametrize("text", ['conn.supports("reconnect")\n', 'ok = "checksum" in hello.features\n',
                                  'features = ("checksum",)\n', 'FEATURE_CHECKSUM = "checksum"\n'])
def test_plain_words_in_a_feature_context_are_features(text):
    assert len(spelled_facts(text, "example.py")) == 1
