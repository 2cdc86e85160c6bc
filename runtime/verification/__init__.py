"""Verification of exported models against the PyTorch reference, torch-free.

One comparison code serves ``omama export`` (its parity checks, with the torch reference
computed live on many inputs) and ``omama-run verify`` (the golden inputs and torch fp32
outputs stored in the artifacts folder, replayed on the target machine):

- :mod:`.tolerances`: the tolerances per precision and the error measures;
- :mod:`.inputs`: deterministic check inputs (synthetic scenes, masks, boxes, features);
- :mod:`.compare`: per model kind, the reference record a torch output becomes and the
  checks that compare another backend's output with it;
- :mod:`.nms_agreement`: tie-tolerant comparison of the detections two NMS runs kept;
- :mod:`.golden`: the ``golden/<model>.npz`` files;
- :mod:`.replay`: ``omama-run verify``: golden inputs through the sessions users run.
"""
