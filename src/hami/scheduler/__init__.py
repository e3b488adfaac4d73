"""hami.scheduler package."""
