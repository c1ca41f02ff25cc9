"""How stored bytes are encoded: compression (gz in blocks, zst, lz4) and AES-256-GCM encryption."""
