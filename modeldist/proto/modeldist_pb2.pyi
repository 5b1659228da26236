from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeSpec(_message.Message):
    __slots__ = ("node_id", "data_addr", "upload_bps", "download_bps", "labels", "transports")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDR_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_BPS_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_BPS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TRANSPORTS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    data_addr: str
    upload_bps: float
    download_bps: float
    labels: _containers.ScalarMap[str, str]
    transports: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., data_addr: _Optional[str] = ..., upload_bps: _Optional[float] = ..., download_bps: _Optional[float] = ..., labels: _Optional[_Mapping[str, str]] = ..., transports: _Optional[_Iterable[str]] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("node", "resume")
    NODE_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    node: NodeSpec
    resume: _containers.RepeatedCompositeFieldContainer[ResumeJob]
    def __init__(self, node: _Optional[_Union[NodeSpec, _Mapping]] = ..., resume: _Optional[_Iterable[_Union[ResumeJob, _Mapping]]] = ...) -> None: ...

class ResumeJob(_message.Message):
    __slots__ = ("model", "manifest_json", "source", "revision", "session_key", "epoch", "stripes", "parents", "children", "complete", "have", "digests", "bytes_from_origin", "bytes_from_peers", "bytes_sent", "bytes_by_transport")
    class BytesByTransportEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SESSION_KEY_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STRIPES_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    HAVE_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FROM_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    BYTES_FROM_PEERS_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_BY_TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    model: str
    manifest_json: bytes
    source: str
    revision: str
    session_key: bytes
    epoch: int
    stripes: int
    parents: _containers.RepeatedCompositeFieldContainer[Parent]
    children: _containers.RepeatedScalarFieldContainer[str]
    complete: bool
    have: _containers.RepeatedScalarFieldContainer[int]
    digests: Digests
    bytes_from_origin: int
    bytes_from_peers: int
    bytes_sent: int
    bytes_by_transport: _containers.ScalarMap[str, int]
    def __init__(self, model: _Optional[str] = ..., manifest_json: _Optional[bytes] = ..., source: _Optional[str] = ..., revision: _Optional[str] = ..., session_key: _Optional[bytes] = ..., epoch: _Optional[int] = ..., stripes: _Optional[int] = ..., parents: _Optional[_Iterable[_Union[Parent, _Mapping]]] = ..., children: _Optional[_Iterable[str]] = ..., complete: _Optional[bool] = ..., have: _Optional[_Iterable[int]] = ..., digests: _Optional[_Union[Digests, _Mapping]] = ..., bytes_from_origin: _Optional[int] = ..., bytes_from_peers: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., bytes_by_transport: _Optional[_Mapping[str, int]] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("node_id", "heartbeat_s", "dead_after_s", "scheduler_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_S_FIELD_NUMBER: _ClassVar[int]
    DEAD_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    heartbeat_s: float
    dead_after_s: float
    scheduler_id: str
    def __init__(self, node_id: _Optional[str] = ..., heartbeat_s: _Optional[float] = ..., dead_after_s: _Optional[float] = ..., scheduler_id: _Optional[str] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class Parent(_message.Message):
    __slots__ = ("stripe", "node_id", "data_addr", "origin")
    STRIPE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDR_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    stripe: int
    node_id: str
    data_addr: str
    origin: bool
    def __init__(self, stripe: _Optional[int] = ..., node_id: _Optional[str] = ..., data_addr: _Optional[str] = ..., origin: _Optional[bool] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("model", "manifest_json", "source", "revision", "stripes", "parents", "children", "session_key", "epoch", "ticket", "children_download_bps")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STRIPES_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    SESSION_KEY_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_DOWNLOAD_BPS_FIELD_NUMBER: _ClassVar[int]
    model: str
    manifest_json: bytes
    source: str
    revision: str
    stripes: int
    parents: _containers.RepeatedCompositeFieldContainer[Parent]
    children: _containers.RepeatedScalarFieldContainer[str]
    session_key: bytes
    epoch: int
    ticket: bytes
    children_download_bps: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, model: _Optional[str] = ..., manifest_json: _Optional[bytes] = ..., source: _Optional[str] = ..., revision: _Optional[str] = ..., stripes: _Optional[int] = ..., parents: _Optional[_Iterable[_Union[Parent, _Mapping]]] = ..., children: _Optional[_Iterable[str]] = ..., session_key: _Optional[bytes] = ..., epoch: _Optional[int] = ..., ticket: _Optional[bytes] = ..., children_download_bps: _Optional[_Iterable[float]] = ...) -> None: ...

class Digests(_message.Message):
    __slots__ = ("model", "indices", "digests")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    indices: _containers.RepeatedScalarFieldContainer[int]
    digests: bytes
    def __init__(self, model: _Optional[str] = ..., indices: _Optional[_Iterable[int]] = ..., digests: _Optional[bytes] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("model", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PlanUpdate(_message.Message):
    __slots__ = ("assignment", "digests", "cancel")
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    assignment: Assignment
    digests: Digests
    cancel: Cancel
    def __init__(self, assignment: _Optional[_Union[Assignment, _Mapping]] = ..., digests: _Optional[_Union[Digests, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("peer", "piece", "kind", "detail")
    PEER_FIELD_NUMBER: _ClassVar[int]
    PIECE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    peer: str
    piece: int
    kind: str
    detail: str
    def __init__(self, peer: _Optional[str] = ..., piece: _Optional[int] = ..., kind: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ProgressReport(_message.Message):
    __slots__ = ("node_id", "model", "have", "digests", "failures", "complete", "bytes_from_origin", "bytes_from_peers", "bytes_by_transport", "bytes_sent", "error", "heartbeat")
    class BytesByTransportEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HAVE_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FROM_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    BYTES_FROM_PEERS_FIELD_NUMBER: _ClassVar[int]
    BYTES_BY_TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    model: str
    have: _containers.RepeatedScalarFieldContainer[int]
    digests: Digests
    failures: _containers.RepeatedCompositeFieldContainer[Failure]
    complete: bool
    bytes_from_origin: int
    bytes_from_peers: int
    bytes_by_transport: _containers.ScalarMap[str, int]
    bytes_sent: int
    error: str
    heartbeat: bool
    def __init__(self, node_id: _Optional[str] = ..., model: _Optional[str] = ..., have: _Optional[_Iterable[int]] = ..., digests: _Optional[_Union[Digests, _Mapping]] = ..., failures: _Optional[_Iterable[_Union[Failure, _Mapping]]] = ..., complete: _Optional[bool] = ..., bytes_from_origin: _Optional[int] = ..., bytes_from_peers: _Optional[int] = ..., bytes_by_transport: _Optional[_Mapping[str, int]] = ..., bytes_sent: _Optional[int] = ..., error: _Optional[str] = ..., heartbeat: _Optional[bool] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StageRequest(_message.Message):
    __slots__ = ("source", "revision", "allow_patterns", "piece_size", "nodes")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PATTERNS_FIELD_NUMBER: _ClassVar[int]
    PIECE_SIZE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    source: str
    revision: str
    allow_patterns: _containers.RepeatedScalarFieldContainer[str]
    piece_size: int
    nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, source: _Optional[str] = ..., revision: _Optional[str] = ..., allow_patterns: _Optional[_Iterable[str]] = ..., piece_size: _Optional[int] = ..., nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class StageReply(_message.Message):
    __slots__ = ("model", "nodes", "total_bytes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    model: str
    nodes: int
    total_bytes: int
    def __init__(self, model: _Optional[str] = ..., nodes: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class NodeProgress(_message.Message):
    __slots__ = ("node_id", "have", "complete", "rate_bps", "parents", "bytes_from_origin", "bytes_from_peers", "state", "error", "bytes_by_transport", "seconds", "reparented_from")
    class BytesByTransportEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HAVE_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    RATE_BPS_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FROM_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    BYTES_FROM_PEERS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BYTES_BY_TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    REPARENTED_FROM_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    have: int
    complete: bool
    rate_bps: float
    parents: _containers.RepeatedCompositeFieldContainer[Parent]
    bytes_from_origin: int
    bytes_from_peers: int
    state: str
    error: str
    bytes_by_transport: _containers.ScalarMap[str, int]
    seconds: float
    reparented_from: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., have: _Optional[int] = ..., complete: _Optional[bool] = ..., rate_bps: _Optional[float] = ..., parents: _Optional[_Iterable[_Union[Parent, _Mapping]]] = ..., bytes_from_origin: _Optional[int] = ..., bytes_from_peers: _Optional[int] = ..., state: _Optional[str] = ..., error: _Optional[str] = ..., bytes_by_transport: _Optional[_Mapping[str, int]] = ..., seconds: _Optional[float] = ..., reparented_from: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("model", "source", "total_bytes", "pieces", "stripes", "nodes", "replans")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    PIECES_FIELD_NUMBER: _ClassVar[int]
    STRIPES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    REPLANS_FIELD_NUMBER: _ClassVar[int]
    model: str
    source: str
    total_bytes: int
    pieces: int
    stripes: int
    nodes: _containers.RepeatedCompositeFieldContainer[NodeProgress]
    replans: int
    def __init__(self, model: _Optional[str] = ..., source: _Optional[str] = ..., total_bytes: _Optional[int] = ..., pieces: _Optional[int] = ..., stripes: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[NodeProgress, _Mapping]]] = ..., replans: _Optional[int] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_id", "data_addr", "alive", "last_seen_s", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDR_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_S_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    data_addr: str
    alive: bool
    last_seen_s: float
    labels: _containers.ScalarMap[str, str]
    def __init__(self, node_id: _Optional[str] = ..., data_addr: _Optional[str] = ..., alive: _Optional[bool] = ..., last_seen_s: _Optional[float] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("nodes", "models")
    NODES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    models: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ...) -> None: ...
