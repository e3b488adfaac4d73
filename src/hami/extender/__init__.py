"""``hami scheduler``: the kube-scheduler extender service around the pure scheduling core."""
