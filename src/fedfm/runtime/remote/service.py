"""The gRPC face of a :class:`~fedfm.runtime.remote.coordinator.Coordinator`.

Every call is answered with a reply or a clear status: a busy server says
``RESOURCE_EXHAUSTED`` (the client retries), an unexpected error is logged with the client id
and the call and answered ``INTERNAL``, never an unlogged ``UNKNOWN``. The server has
``THREADS`` handler threads and refuses calls beyond them instead of queueing them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from fedfm.errors import ConfigError, FedFMError
from fedfm.runtime.remote import fedfm_pb2 as pb
from fedfm.runtime.remote import fedfm_pb2_grpc as pb_grpc
from fedfm.runtime.remote.codec import CodecError
from fedfm.runtime.remote.coordinator import THREADS, Busy, Coordinator


def _peer(context: Any) -> str | None:
    """The common name of the client's TLS certificate (mutual TLS), else None."""
    names = context.auth_context().get("x509_common_name") if context is not None else None
    return names[0].decode("utf-8", "replace") if names else None


class _Service(pb_grpc.FederationServicer):
    """The gRPC face of a :class:`Coordinator`: every call answered with a reply or a clear
    status, never an unlogged ``UNKNOWN``."""

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord

    def _guarded(self, call: str, client_id: str, context: Any, work: Callable[[], Any]) -> Any:
        try:
            return work()
        except Busy as err:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"busy: {err}")
        except Exception as err:
            if not context.is_active():  # the client left; nobody to answer
                raise
            self.coord._error(call, client_id, err)
            context.abort(grpc.StatusCode.INTERNAL, f"{call} failed on the server (logged)")

    def GetConfig(self, request: pb.JoinRequest, context: Any) -> pb.ConfigReply:  # noqa: N802
        return self._guarded(
            "GetConfig",
            request.client_id,
            context,
            lambda: self.coord.config(request, _peer(context)),
        )

    def Join(self, request: pb.JoinRequest, context: Any) -> pb.JoinReply:  # noqa: N802
        return self._guarded(
            "Join", request.client_id, context, lambda: self.coord.join(request, _peer(context))
        )

    def GetTask(self, request: pb.TaskRequest, context: Any) -> Iterator[pb.Chunk]:  # noqa: N802
        try:
            yield from self.coord.task(request, context, _peer(context))
        except Exception as err:
            if context.is_active():
                self.coord._error("GetTask", request.client_id, err)
                context.abort(grpc.StatusCode.INTERNAL, "GetTask failed on the server (logged)")

    def SendUpdate(self, request_iterator: Iterator[bytes], context: Any) -> pb.Ack:  # noqa: N802
        chunks_in = (_parse_chunk(data) for data in request_iterator)
        return self._guarded(
            "SendUpdate",
            "?",
            context,
            lambda: self.coord.submit(chunks_in, context, _peer(context)),
        )


def _parse_chunk(data: bytes) -> pb.Chunk:
    """One message of an update stream, parsed here rather than by gRPC: a stream whose
    message gRPC cannot parse is left pending inside grpcio, and ``server.stop`` then never
    completes (grpcio 1.85)."""
    try:
        return pb.Chunk.FromString(data)
    except Exception:  # protobuf's DecodeError, or anything else from a crafted message
        raise CodecError(f"a message of {len(data):,} bytes that is no fedfm Chunk") from None


def _handlers(service: _Service) -> grpc.GenericRpcHandler:
    """The service's methods: as generated (``add_FederationServicer_to_server``), except
    that SendUpdate takes its messages as bytes (see :func:`_parse_chunk`)."""
    return grpc.method_handlers_generic_handler(
        "fedfm.Federation",
        {
            "GetConfig": grpc.unary_unary_rpc_method_handler(
                service.GetConfig,
                request_deserializer=pb.JoinRequest.FromString,
                response_serializer=pb.ConfigReply.SerializeToString,
            ),
            "Join": grpc.unary_unary_rpc_method_handler(
                service.Join,
                request_deserializer=pb.JoinRequest.FromString,
                response_serializer=pb.JoinReply.SerializeToString,
            ),
            "GetTask": grpc.unary_stream_rpc_method_handler(
                service.GetTask,
                request_deserializer=pb.TaskRequest.FromString,
                response_serializer=pb.Chunk.SerializeToString,
            ),
            "SendUpdate": grpc.stream_unary_rpc_method_handler(
                service.SendUpdate,
                request_deserializer=None,  # raw bytes
                response_serializer=pb.Ack.SerializeToString,
            ),
        },
    )


def start_server(coord: Coordinator) -> tuple[grpc.Server, int]:
    """Start the gRPC server on ``remote.address`` (TLS unless ``remote.insecure``); return
    it and the bound port."""
    remote = coord.cfg.remote
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="fedfm-serve"),
        maximum_concurrent_rpcs=THREADS,
    )
    server.add_generic_rpc_handlers((_handlers(_Service(coord)),))
    if remote.insecure:
        port = server.add_insecure_port(remote.address)
    else:
        folder = Path(remote.tls_dir)
        try:
            key, cert = (folder / "server.key").read_bytes(), (folder / "server.pem").read_bytes()
            ca = (folder / "ca.pem").read_bytes()
        except OSError as err:
            raise ConfigError(
                f"remote.tls_dir = '{folder}': {err.strerror} ({err.filename}); run "
                "`fedfm admin init-tls` there first"
            ) from None
        creds = grpc.ssl_server_credentials(
            [(key, cert)],
            root_certificates=ca if remote.mutual_tls else None,
            require_client_auth=remote.mutual_tls,
        )
        port = server.add_secure_port(remote.address, creds)
    if port == 0:
        raise FedFMError(f"could not listen on remote.address = {remote.address!r}")
    server.start()
    return server, port
