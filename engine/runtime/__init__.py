"""Device-side runtime: preprocessing, ONNX inference glue and post-processing.

This package is copied into every deployment bundle and runs where only numpy, onnxruntime,
opencv and pyclipper are installed: it never imports torch or anything from engine outside
engine/runtime, and uses relative imports only.  Importing the package itself loads nothing
heavy — import the submodules (``engine.runtime.preprocess``, ``engine.runtime.postprocess``,
``engine.runtime.geometry``) you need.
"""
