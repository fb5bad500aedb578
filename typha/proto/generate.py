"""Regenerates typha/proto/sync_pb2.py(i) from proto/typha/v1/sync.proto with the pinned grpcio-tools.

The gRPC service stubs are not generated: the server and client register the one streaming method
by hand with a bytes-passthrough serializer, which is what lets them share pre-encoded frames.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
PROTO_FILE = "typha/v1/sync.proto"
OUTPUTS = ("sync_pb2.py", "sync_pb2.pyi")


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc  # type: ignore[import-untyped]  # grpcio-tools ships no type information

    with tempfile.TemporaryDirectory() as tmp:
        code = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                            str(PROTO_DIR / PROTO_FILE)])
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}")
        written = []
        for name in OUTPUTS:
            target = out_dir / name
            shutil.copyfile(Path(tmp) / "typha" / "v1" / name, target)
            written.append(target)
        return written


if __name__ == "__main__":
    for path in generate(Path(__file__).resolve().parent):
        print(f"wrote {path}")
    sys.exit(0)
