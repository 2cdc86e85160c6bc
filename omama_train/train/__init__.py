"""``omama train``: train the O-MaMa matcher on cached features (or fine-tune the backbone).

- :mod:`~omama_train.train.config`: the run's options and their checks.
- :mod:`~omama_train.train.distributed`: rank, device and collectives (torchrun/DDP).
- :mod:`~omama_train.train.data`: pairs, geometry, feature source, data hash.
- :mod:`~omama_train.train.model`: the module training wraps, its loss and init.
- :mod:`~omama_train.train.trainer`: the loop (steps, epochs, early stop).
- :mod:`~omama_train.train.validate`: official metrics on the validation pairs.
- :mod:`~omama_train.train.checkpoint`: what a checkpoint holds, and resuming from it.
- :mod:`~omama_train.train.generations`: a multi-file checkpoint made visible at once.
- :mod:`~omama_train.train.runfolder`: the run folder's lock and a killed run's leftovers.
- :mod:`~omama_train.train.runlog`: metrics.csv, TensorBoard, console lines.
- :mod:`~omama_train.train.cli`: the command.
"""
