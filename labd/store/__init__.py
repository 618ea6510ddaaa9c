"""The measurement store: every physical forward query, recorded crash-safe.

``writer.Store`` records, ``reader.StoreReader`` reads back; docs/performance.md (Store)
explains the design and its figures. The store imports nothing of labd outside this package.
"""
