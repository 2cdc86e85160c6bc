"""``python -m omama_train.train ARGS`` (e.g. under torchrun) is ``omama train ARGS``."""

from omama_train.train.cli import main

main()
