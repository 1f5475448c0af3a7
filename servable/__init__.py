"""The contract between export/ and service/: what makes an ONNX file servable, and where it lives.

- :mod:`servable.card`: the model card inside every exported file (labels, preprocessing, provenance,
  precision, verification) and the tensor names every graph uses;
- :mod:`servable.preprocessing`: the one :class:`~servable.preprocessing.Preprocessing` type;
- :mod:`servable.images` (with :mod:`servable.jpeg`): the pixel kernel both sides run, bytes to the
  model's uint8 crop, raising :mod:`servable.errors` of its own;
- :mod:`servable.layout`: the model repository on disk (names, versions, the atomic publish).

It imports nothing of this project, so either side can change without the other as long as this holds.
"""
