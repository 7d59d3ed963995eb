"""config.pbtxt text ⇄ Triton's `ModelConfig` protobuf ⇄ Triton's JSON form of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2

from naiad.domain.errors import invalid

_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def parse_text(text: str, where: str) -> model_config_pb2.ModelConfig:
    """Parse config.pbtxt text with protobuf's text format, as Triton does."""
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise invalid(f"failed to parse {where}: {exc}") from None
    return config


def read_file(path: Path) -> dict[str, Any]:
    """A config.pbtxt file as Triton's JSON form of the config."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise invalid(f"failed to read {path}: {exc}") from None
    return to_json(parse_text(text, str(path)))


def to_json(config: Message) -> dict[str, Any]:
    """Triton's JSON for a config: proto field names, every field shown, 64-bit integers as numbers."""
    data = json_format.MessageToDict(
        config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _numbers_for_int64(config.DESCRIPTOR, data)
    return data


def from_json(data: dict[str, Any], where: str) -> model_config_pb2.ModelConfig:
    """A config in JSON form checked against the `ModelConfig` message (field names and types)."""
    config = model_config_pb2.ModelConfig()
    try:
        json_format.ParseDict(data, config)
    except json_format.ParseError as exc:
        raise invalid(f"invalid model configuration for {where}: {exc}") from None
    return config


def _numbers_for_int64(descriptor: Any, data: dict[str, Any]) -> None:
    """Protobuf's JSON writes 64-bit integers as strings; Triton's /config answers numbers."""
    for name, value in data.items():
        field = descriptor.fields_by_name.get(name)
        if field is None:
            continue
        if field.type in _INT64_TYPES:
            data[name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = field.message_type
            if sub.GetOptions().map_entry:
                value_field = sub.fields_by_name["value"]
                for key, item in value.items():
                    if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                        _numbers_for_int64(value_field.message_type, item)
                    elif value_field.type in _INT64_TYPES:
                        value[key] = int(item)
            elif isinstance(value, list):
                for item in value:
                    _numbers_for_int64(sub, item)
            else:
                _numbers_for_int64(sub, value)


__all__ = ["from_json", "parse_text", "read_file", "to_json"]
