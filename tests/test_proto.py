"""The gRPC stubs committed in interactionlog/proto are what the .proto generates, and carry records as text."""

from __future__ import annotations

import re
from pathlib import Path

from interactionlog.proto import generate, ingest_pb2

HERE = Path(generate.__file__).parent

# Lines that name the generator's version rather than the .proto's content.
_VERSION_STAMPS = [
    re.compile(r"^# Protobuf Python Version: .*$", re.MULTILINE),
    re.compile(r"^GRPC_GENERATED_VERSION = .*$", re.MULTILINE),
    re.compile(r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*\d+,\s*\d+,\s*\d+,"),
]


def without_versions(text: str) -> str:
    """`text` with the generator versions blanked out."""
    for stamp in _VERSION_STAMPS:
        text = stamp.sub("<version>", text)
    return text


def test_the_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    """Regenerating from ingest.proto gives the committed files (up to the generators' version stamps): run
    `python -m interactionlog.proto.generate` after editing the .proto."""
    for fresh in generate.generate(tmp_path):
        committed = HERE / fresh.name
        assert without_versions(committed.read_text()) == without_versions(fresh.read_text()), (
            f"{committed.name} is out of date: run python -m interactionlog.proto.generate"
        )


def test_a_record_travels_as_json_text_not_a_struct() -> None:
    """`InteractionData.data` is a string, so a record's numbers arrive as written (a Struct holds doubles)."""
    field = ingest_pb2.InteractionData.DESCRIPTOR.fields_by_name["data"]
    assert field.type == field.TYPE_STRING
    names = [field.name for field in ingest_pb2.InteractionData.DESCRIPTOR.fields]
    assert names == ["mcp_id", "interaction_id", "timestamp", "data"]
    assert [f.name for f in ingest_pb2.InteractionResponse.DESCRIPTOR.fields][:3] == [
        "interaction_id", "success", "message",
    ]  # fmt: skip
