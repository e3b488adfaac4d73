"""hami.kube package."""
