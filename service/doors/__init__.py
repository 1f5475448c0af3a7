"""The doors: each turns one wire format into pipeline calls and the answers back into that format.

Cut apart from the pipeline so a new transport is one module here and nothing else: ``predict``
(multipart and raw image bodies), ``v2`` (KServe V2 / Open Inference over REST and gRPC), ``admin``
(probes, /models, /metrics), and what HTTP needs around them: the ASGI fast path (``asgi``), the
bounded request-head parser (``http``), body reading under limits (``upload``) and the /docs schemas.
A door may read the engine's state for metadata; it never batches or decodes itself.
"""
