"""``omama serve``: O-MaMa masks over HTTP, on Ray Serve (docs/serve.md).

- :mod:`runtime.serve.protocol`: request bodies (JSON or multipart) to checked arrays, the
  4xx errors, the response JSON; no Ray.
- :mod:`runtime.serve.batching`: one batch of requests through one
  :class:`runtime.pipeline.Pipeline`, each destination frame encoded once; no Ray.
- :mod:`runtime.serve.service`: what one replica does (open the artifacts, answer a route);
  no Ray.
- :mod:`runtime.serve.app`: the Ray Serve deployment around it, and starting / stopping it.
- :mod:`runtime.serve.client`: :func:`runtime.serve.client.match`, a urllib client.
- :mod:`runtime.serve.cli`: the ``omama serve`` command.

Ray is imported inside functions only: the lean runtime imports this package without it.
"""
