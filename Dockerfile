# semievol-jax image: the environment pinned in uv.lock, installed hash-checked.
#
#   docker build -t semievol-jax:cpu .                           # CPU (default)
#   docker build --build-arg ACCEL=cuda -t semievol-jax:cuda .   # + jax[cuda12] wheels
#   docker build --build-arg ACCEL=tpu  -t semievol-jax:tpu  .   # + jax[tpu] (libtpu)
#   docker run --rm -v "$PWD/results:/results" semievol-jax:cpu  # runs the demo
#
# Targets: `image` (the default, last stage) and `test` (image + pytest, tests/; the
# CI check runs the torch-free tests in it). Build args: BASE_IMAGE (a stand-in base
# for offline builds), ACCEL (cpu|cuda|tpu), EXTRA_CA_CERTS (PEM text of CA
# certificates to trust, for builds behind a TLS-intercepting proxy). See
# docs/packaging.md.

# python:3.11-slim-bookworm (3.11.16), multi-arch index digest.
ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${BASE_IMAGE} AS base
# pip, uv and Python's ssl all read the system bundle, so one update-ca-certificates
# run is enough to make extra CAs trusted everywhere in the build and at run time.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    UV_NATIVE_TLS=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
ARG EXTRA_CA_CERTS=""
RUN if [ -n "${EXTRA_CA_CERTS}" ]; then \
      printf '%s\n' "${EXTRA_CA_CERTS}" > /usr/local/share/ca-certificates/semievol-extra.crt \
      && update-ca-certificates; \
    fi

FROM base AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG ACCEL=cpu
ARG UV_VERSION=0.13.9
# Build tools live in their own venv so none of them reach the runtime image.
RUN python3 -m venv /opt/buildtools \
    && /opt/buildtools/bin/pip install "uv==${UV_VERSION}"
WORKDIR /src
# Dependencies first (only pyproject.toml + uv.lock): source edits keep this layer.
COPY pyproject.toml uv.lock ./
RUN case "${ACCEL}" in \
      cpu) set -- ;; \
      cuda|tpu) set -- --extra "${ACCEL}" ;; \
      *) echo "ACCEL must be cpu, cuda or tpu, got '${ACCEL}'" >&2; exit 2 ;; \
    esac \
    && export_lock() { /opt/buildtools/bin/uv export --frozen --no-emit-project --no-header -q "$@"; } \
    && export_lock "$@" -o /tmp/requirements.txt \
    && export_lock --extra test --prune torch --prune peft -o /tmp/requirements-test.txt \
    && export_lock --extra test | awk '/^setuptools==/{p=1; print; next} p && /^ /{print; next} {p=0}' \
       > /tmp/requirements-build.txt \
    && grep -q '^setuptools==' /tmp/requirements-build.txt \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --no-deps -r /tmp/requirements.txt \
    && /opt/buildtools/bin/pip install --require-hashes --no-deps -r /tmp/requirements-build.txt
COPY . ./
# The package itself: a wheel built with the lock's setuptools, no build isolation
# (isolation would fetch an unpinned, unhashed setuptools). It is installed in the
# runtime stage, so a source edit leaves the large dependency layer cached.
RUN /opt/buildtools/bin/pip wheel --no-deps --no-build-isolation -w /tmp/wheels .

FROM base AS runtime
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH} \
    HF_HOME=/home/semievol/.cache/huggingface
RUN useradd --create-home --uid 10001 --user-group --shell /bin/bash semievol \
    && mkdir -p /results \
    && chown semievol:semievol /results
COPY --from=builder /tmp/wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/semievol_jax-*.whl \
    && rm -rf /tmp/wheels \
    && semievol --help > /dev/null
USER 10001:10001
WORKDIR /home/semievol
VOLUME ["/results"]
ENTRYPOINT ["semievol"]
CMD ["demo", "--out", "/results/demo"]

FROM runtime AS test
USER 0:0
COPY --from=builder /tmp/requirements-test.txt /tmp/requirements-test.txt
RUN pip install --require-hashes --no-deps -r /tmp/requirements-test.txt \
    && rm /tmp/requirements-test.txt
COPY --from=builder /src/pyproject.toml /src/pyproject.toml
COPY --from=builder /src/tests /src/tests
WORKDIR /src
USER 10001:10001
# No cache provider: /src is root-owned, and the tests import the installed wheel.
ENTRYPOINT ["python", "-m", "pytest", "-p", "no:cacheprovider"]
CMD ["-q", "tests"]

FROM runtime AS image
