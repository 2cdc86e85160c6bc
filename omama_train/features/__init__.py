"""``omama features``: backbone feature maps computed once per image, cached as fp16.

Every unique image of the pairs files, i.e. every ``(take, cam, frame)`` over both views of
every pair, goes through the backbone once; the (768, h, w) maps are stored in float16 in a
memory-mappable store that training reads instead of running DINOv2 again every epoch.

Store layout (``CACHE``)::

    CACHE/meta.json                        what built it: backbone, weights sha256, sizes, dtype
    CACHE/chunks/<kind>-<i>of<n>-<seq>.npy  float16 (rows, C, h, w): the maps of up to K images
    CACHE/chunks/<kind>-<i>of<n>-<seq>.json index part: the "take/cam/frame" key of every row
    CACHE/report[_shard_i_n].json           the last run's summary (counts, MB per 1000 images)
    CACHE/backbone.safetensors              --random-init only: the weights it computed with

``<kind>`` is the camera kind, ``ego`` or ``exo`` (the two kinds have different token
grids, so they never share a file), ``<i>of<n>`` the shard that wrote it and ``<seq>`` a
per-shard counter.

- :mod:`~omama_train.features.images`: which images, their keys and sizes.
- :mod:`~omama_train.features.meta`: ``meta.json``: what built the cache, compatibility.
- :mod:`~omama_train.features.weights`: the backbone weights and their hash.
- :mod:`~omama_train.features.reader`: :class:`~omama_train.features.reader.FeatureCache`.
- :mod:`~omama_train.features.writer`: one kind's maps computed and written in chunks.
- :mod:`~omama_train.features.build`: a whole (resumable, sharded) run and its report.
- :mod:`~omama_train.features.cli`: the command.
"""
