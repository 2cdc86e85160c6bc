"""The runs behind ``omama-run``: loops of :class:`runtime.pipeline.Pipeline` calls that
read inputs and write outputs.

- ``pair.py``: one frame pair (``omama-run pair``): masks, overlay and ``result.json``;
- ``video.py``: a video pair (``omama-run video``), with ``video_resume.py`` (the run state
  an interrupted run continues from) and ``video_sink.py`` (the writer thread);
- ``take.py``: every object and camera pair of a processed take (``omama-run take``);
- ``records.py``: what every run writes and counts (file names, skips).
"""
