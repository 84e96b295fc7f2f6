"""edge: a static-file CDN edge node."""

__version__ = "0.1.0"
