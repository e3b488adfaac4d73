"""hami.sandbox package."""
