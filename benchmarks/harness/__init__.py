"""The library behind ``omama bench``: every backend x precision of an artifacts folder,
measured on the same inputs, one fresh worker process per row.

* **inputs** (:mod:`.inputs`): P frame pairs at the model's view sizes, each with K objects
  (ellipses of distinct colours, placed differently in the two views); the K source masks
  are the queries. Each destination frame also has a fixed set of candidate masks (the K
  objects and random distractors), used by the fidelity pass and, when the artifacts hold
  no FastSAM (or ``--candidate-source synthetic``), by the timed runs;
* **rows** (:mod:`.plan`, :mod:`.worker`): one fresh worker process per backend x precision
  (``python -m benchmarks.harness.worker SPEC.json``), so each row's peak host memory is
  its own, thread settings cannot leak between rows, and a crash costs one row. The torch
  fp32 row runs first: its outputs are the fidelity reference every other row is compared
  with. The ``reference`` row runs the O-MaMa shape (:mod:`benchmarks.reference`) on the
  same torch models;
* **timing** (:mod:`.passes`, :mod:`.runners`): ``time.perf_counter`` around each stage (the
  pipeline's own per-stage record) and around the whole pair (end to end), after warm-up,
  for ``repeats`` passes over the P pairs. On a GPU every session call returns host arrays,
  so its GPU work is finished when the clock stops (torch copies to the host, TensorRT
  synchronises its stream, ONNX Runtime's ``run`` is synchronous); the torch backend also
  records CUDA events around each model call (``device_ms``);
* **fidelity** (:mod:`.stats`) vs torch fp32 on the same inputs: argmax agreement and the
  largest absolute similarity difference on the fixed candidate sets (so FastSAM
  differences cannot mix candidate indices), and the mean IoU of the final masks of the
  end-to-end run;
* **memory** (:mod:`.memory`): peak resident memory of the worker (``ru_maxrss``: imports,
  model loading and the runs); on CUDA the torch allocator's peak, or for the other
  backends the device-wide used memory above its pre-run value (``nvidia-smi``, sampled
  during warm-up and the fidelity pass, never while timing);
* **score** (:mod:`.score`, ``--score-root ROOT``): each backend runs the takes of a
  processed root and the official metrics (:mod:`runtime.evaluate`);
* :mod:`.run` orchestrates the rows and returns the report dict that :mod:`.report` writes
  (report.json, report.md, latency.png) and compares (``--compare``).
"""
