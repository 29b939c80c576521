# routelb's image: the routelb binary, and BIRD 2 and FRR for the routing sidecars (the
# agent also runs birdc's protocol, vtysh and frr-reload.py against them, so the sidecars
# use this same image and versions always match).
#
#   docker build -t REGISTRY/routelb:0.1.0 .
#
# Build stage: the workspace as it is; only the routelb binary ships (fake-apiserver and
# the lab are test tools).
FROM docker.io/library/rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --package routelb --bin routelb \
 && strip target/release/routelb

FROM docker.io/library/debian:bookworm-slim
# Fixed IDs for FRR's user and groups, so the DaemonSet can name the vty group (972) in
# supplementalGroups; created before the packages, which then reuse them.
RUN groupadd --system --gid 971 frr \
 && groupadd --system --gid 972 frrvty \
 && useradd --system --uid 971 --gid frr --groups frrvty \
      --home-dir /var/run/frr --no-create-home --shell /usr/sbin/nologin frr \
 && apt-get update \
 && apt-get install -y --no-install-recommends bird2 frr frr-pythontools python3 iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /etc/bird/bird.conf /etc/frr/frr.conf
COPY --from=build /src/target/release/routelb /usr/local/bin/routelb
COPY templates/bird.conf.tera templates/frr.conf.tera /etc/routelb/templates/
ENTRYPOINT ["/usr/local/bin/routelb"]
