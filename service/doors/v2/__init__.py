"""The Open Inference Protocol (KServe V2, as Triton speaks it) over REST and gRPC.

:mod:`service.doors.v2.tensors` decodes and encodes tensors (JSON data, the binary tensor data extension,
BYTES length-prefix framing) with total parsers; :mod:`service.doors.v2.protocol` is the transport-free
part (model names and forms, metadata, config, repository index, infer on the shared pipeline);
:mod:`service.doors.v2.rest` and :mod:`service.doors.v2.grpc` are the two doors.
"""
