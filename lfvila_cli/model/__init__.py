"""Model components: the HTWA video encoder (``video_encoder``), text encoder, fusion and heads.

Import the submodules directly (``from lfvila_cli.model.video_encoder import VideoEncoder``);
this package imports nothing heavy so that the CLI starts fast.
"""
