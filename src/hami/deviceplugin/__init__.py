"""hami.deviceplugin package."""
