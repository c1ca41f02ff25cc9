"""The commands beyond push/get: backup, restore, expire, verify, info, check, stanza-create (docs/architecture.md)."""
