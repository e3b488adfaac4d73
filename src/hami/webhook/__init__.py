"""hami.webhook package."""
