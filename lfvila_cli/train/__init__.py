"""Training over the DeepSpeed engine: config, parameter groups, LR schedule, checkpoints, loop.

Import the submodules directly (``from lfvila_cli.train.engine import Trainer``); this package
imports nothing heavy so that the CLI starts fast.
"""
