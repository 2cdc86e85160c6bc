"""``omama bench`` reports: report.json, report.md, latency.png, and ``--compare``.

``report.md`` (:mod:`.markdown`) opens with a summary table in the shape of ``yolo
benchmark`` (:mod:`.summary`: one row per backend x precision: status, size, fidelity,
latency, throughput, memory), then the mean latency of every stage per row, one table per
stage with its percentiles, the official metrics when ``--score-root`` was given, warnings
where a precision changes the answers (as NanoSAM's table notes where fp16 broke a model),
how everything was measured, and the machine. ``report.json`` (:mod:`.files`) holds the
same and every raw sample. ``latency.png`` (:mod:`.plot`) stacks the mean stage latencies
of each row. :mod:`.compare` prints the ratios between two report.json files.
"""
