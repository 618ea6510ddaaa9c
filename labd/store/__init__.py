"""The measurement store: every physical forward query, recorded crash-safe in SQLite.

* ``labd.store.schema``: the file layout and its step upgrades.
* ``labd.store.writer``: ``Store``, the daemon's ``Recorder`` (group commit in one writer
  thread; the durability guarantee is stated there).
* ``labd.store.reader``: ``StoreReader``, filtered streaming reads for ``labd data`` and the
  trainer.
"""
