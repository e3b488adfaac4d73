"""hami.protocol package."""
