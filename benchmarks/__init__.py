"""Benchmarks: the service against raw onnxruntime, a naive FastAPI + PyTorch baseline and peer servers.

Run ``python -m benchmarks [raw|service|naive|preprocess|pytriton|litserve|torchserve|int8|all] [--quick]``.
Every figure comes from one run on one machine, so the ratios (service/raw, service/naive,
service/<peer>) compare like with like; peers (``benchmarks/peers``) serve the same ONNX file with the
same preprocessing and are measured interleaved with the service. ``int8`` (also
``python -m benchmarks.int8``) measures what INT8 costs in accuracy; ``python -m benchmarks.diagnose``
says where a server spends its CPU per request.
"""
