"""hami.scheduling package."""
