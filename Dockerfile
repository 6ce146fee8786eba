# Fulcrum container image.
#
#   docker build -t fulcrum .
#   docker run --rm -p 7000:7000 -v $PWD/my.yaml:/etc/fulcrum/fulcrum.yaml:ro fulcrum
#
# The configuration is read from /etc/fulcrum/fulcrum.yaml; listeners inside a container must listen on
# 0.0.0.0 (or '[::]:PORT', quoted as YAML needs) to be reachable through a published port.

# Build stage: the same `make release` that builds the binary outside containers.
ARG SWIFT_VERSION=6.3
FROM swift:${SWIFT_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libevent-dev pkg-config make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift Makefile ./
COPY .ci .ci
COPY Sources Sources
RUN make release

# Run stage: a slim Debian with only libevent's runtime, as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libevent-2.1-7 libevent-core-2.1-7 libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin fulcrum
COPY --from=build /src/.build/release/fulcrum /usr/local/bin/fulcrum
COPY examples/quickstart.yaml /etc/fulcrum/fulcrum.yaml
USER fulcrum
EXPOSE 7000
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/fulcrum"]
CMD ["run", "--config", "/etc/fulcrum/fulcrum.yaml"]
