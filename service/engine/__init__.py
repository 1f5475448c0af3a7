"""The engine: what is loaded and how it runs, independent of any request or transport.

Cut here because everything in it lives longer than a request: the repository scan and the per-model
``config.toml`` (``repository``), each model's effective settings (``model_settings``), onnxruntime
sessions and their providers (``runtime``), the routing table of versions and their leases
(``served``), the live repository that loads, switches and retires versions (``manager``), and one
dynamic batcher per version (``batcher``). It knows nothing of HTTP, gRPC or request bodies.
"""
