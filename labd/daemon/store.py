"""The daemon's side of the measurement store (``labd.store``): ``open_store(path, options)``
returns the ``Recorder`` the server hands every measurement to; ``StoreReader`` reads it back.
"""

from labd.store.reader import StoreReader
from labd.store.writer import Store, StoreError, open_store

__all__ = ["Store", "StoreError", "StoreReader", "open_store"]
