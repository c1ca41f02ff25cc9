"""What the files in a repository mean: archive.info, the WAL archive, the backup catalog, the codec (docs/architecture.md)."""
