# hami.local/hami for CI systems that build with Docker/BuildKit:
#   docker build -t hami.local/hami:0.1.0 .
# The same Debian packages, locked wheels, layout and user as `make images`, which is the tested
# and reproducible path (docs/images.md); this file is not exercised on the project's machines.

FROM debian:bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev make binutils python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# the pinned uv (hash-checked), then exactly uv.lock's runtime wheels into the /opt/hami venv
RUN uv=$(HAMI_CACHE_DIR=/cache PYTHON=python3.11 hack/ensure-uv.sh) \
 && python3.11 -m venv --without-pip /opt/hami \
 && "$uv" export --frozen --no-dev --no-emit-project --no-header > /tmp/requirements.txt \
 && "$uv" pip install --python /opt/hami/bin/python --require-hashes --only-binary :all: --no-deps \
      -r /tmp/requirements.txt \
 && "$uv" pip install --python /opt/hami/bin/python --no-deps \
      --build-constraints images/build-constraints.txt . \
 && /opt/hami/bin/python -m compileall -q --invalidation-mode unchecked-hash /usr/lib/python3.11 /opt/hami \
 && /opt/hami/bin/hami --version
RUN make -C native build/libvgpu.so \
 && install -D -m 0755 native/build/libvgpu.so /opt/hami/lib/libvgpu.so \
 && strip --strip-debug /opt/hami/lib/libvgpu.so

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11-minimal libpython3.11-stdlib libffi8 libssl3 \
      libstdc++6 libgcc-s1 \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man /usr/share/locale \
 && echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'nonroot:x:65532:' >> /etc/group \
 && install -d -m 0700 -o 65532 -g 65532 /home/nonroot
COPY --from=build /usr/lib/python3.11 /usr/lib/python3.11
COPY --from=build /opt/hami /opt/hami
ENV PATH=/opt/hami/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1
LABEL org.opencontainers.image.title="hami: HAMi-compatible GPU sharing for Kubernetes" \
      org.opencontainers.image.version="0.1.0"
USER 65532:65532
ENTRYPOINT ["hami"]
