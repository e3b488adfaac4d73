"""hami.monitor package."""
