"""modeldist: get AI model weights onto every GPU node of a cluster, fast, reading the origin once.

Public API (DESIGN section 2)::

    tensors = modeldist.load("hf://org/name", framework="pt")
    for name, t in modeldist.stream(source): ...
    path = modeldist.snapshot_download("org/name")
    manifest = modeldist.Manifest.from_source(source)
"""

from . import errors
from .api import load, snapshot_download, stream
from .config import Config
from .manifest import Manifest

__all__ = ["load", "stream", "snapshot_download", "Manifest", "Config", "errors", "__version__"]

__version__ = "0.1.0"
