"""The method table the sync and async clients share: one `Rpc` per RPC, and request building.

Each client module lists its service's RPCs once as `Rpc` rows (path, message types, whether a
retry is safe); the sync and async twins both call through those rows, so the two can never
disagree on which call is retried or how its request is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from google.protobuf import message_factory, timestamp_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

_TIMESTAMP = timestamp_pb2.Timestamp.DESCRIPTOR.full_name


class Rpc:
    """One RPC of a service: its path, message types, shape and retry safety."""

    __slots__ = (
        "path",
        "request_type",
        "response_type",
        "client_streaming",
        "server_streaming",
        "_idempotent",
    )

    def __init__(
        self,
        service: ServiceDescriptor,
        name: str,
        *,
        idempotent: bool | Callable[[Any], bool] = False,
    ) -> None:
        method = service.methods_by_name[name]
        self.path = f"/{service.full_name}/{name}"
        # GetMessageClass returns the generated class itself, so isinstance checks hold.
        self.request_type: type[Message] = message_factory.GetMessageClass(method.input_type)
        self.response_type: type[Message] = message_factory.GetMessageClass(method.output_type)
        self.client_streaming = method.client_streaming
        self.server_streaming = method.server_streaming
        # A callable when retry safety depends on the request (UpsertCard and its card_token).
        self._idempotent = idempotent

    def __repr__(self) -> str:
        return f"Rpc({self.path!r})"

    def is_idempotent(self, request: Message) -> bool:
        """Says whether this request may be sent again after a failure without harm."""
        if callable(self._idempotent):
            return bool(self._idempotent(request))
        return self._idempotent

    def build(self, request: Message | None, fields: Mapping[str, Any]) -> Message:
        """Returns the request message, given as such or built from keyword fields."""
        return build_request(self.request_type, request, fields)

    def bind(self, channel: Any) -> Any:
        """Returns the multi-callable for this RPC on a `grpc.Channel` or `grpc.aio.Channel`."""
        # Both channel kinds expose the same four factories, so one lookup serves both twins.
        if self.client_streaming:
            factory = channel.stream_stream if self.server_streaming else channel.stream_unary
        else:
            factory = channel.unary_stream if self.server_streaming else channel.unary_unary
        return factory(
            self.path,
            request_serializer=self.request_type.SerializeToString,
            response_deserializer=self.response_type.FromString,
        )


def build_request(
    message_type: type[Message], request: Message | None, fields: Mapping[str, Any]
) -> Message:
    """Returns `request`, or a `message_type` built from `fields`, so callers may pass either.

    A `datetime` given for a `google.protobuf.Timestamp` field is converted (a naive one is taken
    as UTC, as protobuf does); every other value must already have the proto field's type.
    """
    if request is not None:
        if fields:
            raise TypeError(
                f"pass either a {message_type.__name__} or keyword fields, not both "
                f"(got fields {sorted(fields)})"
            )
        if not isinstance(request, message_type):
            raise TypeError(
                f"expected a {message_type.DESCRIPTOR.full_name}, got {type(request).__name__}"
            )
        return request
    values = dict(fields)
    for name, value in values.items():
        if isinstance(value, datetime) and _is_timestamp(message_type, name):
            timestamp = timestamp_pb2.Timestamp()
            timestamp.FromDatetime(value)
            values[name] = timestamp
    return message_type(**values)


def _is_timestamp(message_type: type[Message], name: str) -> bool:
    field = message_type.DESCRIPTOR.fields_by_name.get(name)
    return (
        field is not None
        and field.message_type is not None
        and field.message_type.full_name == _TIMESTAMP
    )
