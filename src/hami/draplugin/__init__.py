"""`hami dra-plugin`: the DRA kubelet plugin (docs/dra.md)."""
