"""The request pipeline: what happens to every inference request between its door and its answer.

Cut as its own package because this order is the service's main invariant, and one place must own
it: the API key, admission before a byte of the body is read, the body and pixel budgets, decoding on
the pool, the batcher and the deadline. Doors (:mod:`service.doors`) hand it an
:class:`~service.pipeline.call.InferenceCall` and never call the engine's batchers themselves.
"""

from service.pipeline.call import Admitted, EncodedImages, InferenceCall, Inputs, Target
from service.pipeline.core import Pipeline

__all__ = ["Admitted", "EncodedImages", "InferenceCall", "Inputs", "Pipeline", "Target"]
