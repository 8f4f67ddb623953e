"""Remote clients over gRPC: the wire protocol (``fedfm.proto``) and its checked codec.

``fedfm_pb2*.py`` are generated from ``fedfm.proto`` by ``grpc_tools.protoc`` (the command
is in the proto's header); do not edit them by hand.
"""
