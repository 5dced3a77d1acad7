"""Regenerate the stubs of `ingest.proto`:  python -m interactionlog.proto.generate

Needs grpcio-tools and mypy-protobuf (both in the `dev` extra); the runtime needs neither. The `.pyi` files come
from mypy-protobuf, so the stubs type-check under mypy strict. `tests/test_proto.py` generates into a temporary
directory and compares, so stubs that drift from the `.proto` fail the suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory that holds the interactionlog package
PROTO = "interactionlog/proto/ingest.proto"
STUBS = ("ingest_pb2.py", "ingest_pb2.pyi", "ingest_pb2_grpc.py", "ingest_pb2_grpc.pyi")


def generate(out_dir: Path) -> list[Path]:
    """Compile the .proto into `out_dir` (as interactionlog/proto/...); returns the stub paths written."""
    from grpc_tools import protoc  # type: ignore[import-untyped]  # build-time tool without type hints

    plugins = Path(sys.executable).parent  # mypy-protobuf installs protoc-gen-mypy beside the interpreter
    arguments = [
        "grpc_tools.protoc",
        f"--proto_path={PACKAGE_ROOT}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={plugins / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugins / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        PROTO,
    ]
    if protoc.main(arguments) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}: see its message above")
    return [out_dir / "interactionlog" / "proto" / name for name in STUBS]


def main() -> None:
    """Write the stubs next to the .proto."""
    for path in generate(PACKAGE_ROOT):
        print(f"wrote {path.relative_to(PACKAGE_ROOT)}")


if __name__ == "__main__":
    main()
