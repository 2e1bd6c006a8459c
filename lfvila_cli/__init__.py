"""lfvila: long-form video-language pre-training (LF-VILA) as reproducible, cached stages."""

__version__ = "0.1.0"
