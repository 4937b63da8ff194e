"""SQLite run history of assessments (`bastion report list|show|compare`)."""

from bastion.store.sqlite import RunStore, default_store_path, new_run_id

__all__ = ["RunStore", "default_store_path", "new_run_id"]
