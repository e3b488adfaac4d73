"""hami.devices package."""
