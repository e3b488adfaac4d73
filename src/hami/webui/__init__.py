"""hami.webui package."""
