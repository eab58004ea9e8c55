# syntax=docker/dockerfile:1
# The fleet's one image: every long-running process and one-shot job is a `fleet` subcommand
# (docker-compose.yml and deploy/k8s/ pass the arguments). docs/deploy.md explains the layout.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first (a layer that changes only with the lock), every one pinned by hash.
COPY requirements.lock ./
RUN python -m pip install --require-hashes -r requirements.lock

# Then the project itself, without resolving anything again. Installed in place (editable):
# `fleet db upgrade` finds alembic.ini and migrations/ beside the source, in /app.
COPY pyproject.toml README.md alembic.ini ./
COPY queues ./queues
COPY handlers ./handlers
COPY workers ./workers
COPY dlq ./dlq
COPY migrations ./migrations
RUN python -m pip install --no-deps --no-build-isolation -e . \
    && fleet --help > /dev/null

# A fixed numeric uid/gid, so Kubernetes can check runAsNonRoot and a key file mounted from
# the host can be given to this owner (mode 0600: the key registry refuses anything wider).
RUN groupadd --system --gid 10001 fleet \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin fleet
USER 10001:10001

ENTRYPOINT ["fleet"]
CMD ["--help"]
