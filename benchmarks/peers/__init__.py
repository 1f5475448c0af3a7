"""Peer serving frameworks, each serving the benchmark's ONNX file with the service's preprocessing.

One module per peer (``pytriton``, ``litserve``, ``torchserve``); each runs in its own venv under
``.cache/bench/peers/<peer>-venv`` and is driven by :mod:`benchmarks.peers.runner` with the same wrk
phases as the service. This package imports no peer: their apps (``apps/``) run in those venvs.
"""

from __future__ import annotations

import importlib

from benchmarks.peers.base import Peer

#: Suites of ``python -m benchmarks``, in the order ``all`` runs them.
PEER_NAMES = ("pytriton", "litserve", "torchserve")


def peer(name: str) -> Peer:
    if name not in PEER_NAMES:
        raise ValueError(f"unknown peer {name!r}; choose from {PEER_NAMES}")
    return importlib.import_module(f"benchmarks.peers.{name}").PEER
