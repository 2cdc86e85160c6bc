"""Verification of exported graphs: structure (``graph``) and parity with the torch backend,
one module per model (``backbone``, ``matcher``, ``fastsam``).

Every exported file gets:

- the ONNX checker (full check) and strict shape inference, and constant folding with
  onnxslim, whose node counts before and after are recorded (``export.graphs``);
- parity with the torch backend: the reference is a ``TorchSession`` of the very module the
  file was traced from (``omama_train.models.artifact_modules``), the file runs in a
  session opened through ``runtime.sessions`` (the class users run), and the outputs are
  compared by ``runtime.verification.compare`` with the tolerances of
  ``runtime.verification.tolerances`` (the code ``omama-run verify`` uses on the golden
  files). Inputs are many and random here (200 matcher candidate sets, two images per
  backbone, two scenes for FastSAM); the golden files keep a few cases at the real sizes.
"""
