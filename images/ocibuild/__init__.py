"""Build hami's OCI images here, from Debian packages and PyPI wheels only: no Docker, no registry.

`python -m ocibuild` (run by `make images`) writes one tar per image that holds both an OCI image
layout (for `ctr images import`) and a docker-archive `manifest.json` (for `docker load`), every
byte a function of the inputs: the Debian packages pinned in `images/debian.lock`, the wheels pinned
in `uv.lock`, the source tree, libvgpu.so and the kube-scheduler binary. See docs/images.md.
"""
