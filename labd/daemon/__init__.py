"""The daemon side: server loop, per-system workers, systems, store."""
