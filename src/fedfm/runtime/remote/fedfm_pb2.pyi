from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JoinRequest(_message.Message):
    __slots__ = ("client_id", "token", "backbone")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    token: str
    backbone: str
    def __init__(self, client_id: _Optional[str] = ..., token: _Optional[str] = ..., backbone: _Optional[str] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("accepted", "reason", "session")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    session: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., session: _Optional[str] = ...) -> None: ...

class ConfigReply(_message.Message):
    __slots__ = ("ok", "reason", "config_toml")
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CONFIG_TOML_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    reason: str
    config_toml: str
    def __init__(self, ok: _Optional[bool] = ..., reason: _Optional[str] = ..., config_toml: _Optional[str] = ...) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ("client_id", "session")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    session: str
    def __init__(self, client_id: _Optional[str] = ..., session: _Optional[str] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("kind", "round", "client_id", "total_bytes", "sha256", "meta")
    class MetaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    kind: str
    round: int
    client_id: str
    total_bytes: int
    sha256: str
    meta: _containers.ScalarMap[str, str]
    def __init__(self, kind: _Optional[str] = ..., round: _Optional[int] = ..., client_id: _Optional[str] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., meta: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: Header
    data: bytes
    def __init__(self, header: _Optional[_Union[Header, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("ok", "reason")
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    reason: str
    def __init__(self, ok: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...
