"""hami.config package."""
