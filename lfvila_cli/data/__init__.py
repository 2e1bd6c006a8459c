"""Data: annotation readers, the long-form corpus, video decoding and the Zarr frame store."""
