"""``hami webui``: a read-only web UI that shows the cluster's accelerators and explains them.

``usage`` reads live usage (monitor endpoints or Prometheus), ``explain`` runs the scheduling core
read-only (why a pod waits, what still fits), ``views`` turns the caches into page data, ``server``
renders it (Jinja2, autoescaped), ``runner`` wires the informers, ``cli`` parses the flags.
"""
