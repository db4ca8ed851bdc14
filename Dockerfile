# keystone-auth-proxy sidecar image.
#   docker build -t keystone-auth-proxy .
#   docker run --read-only -v "$PWD/config/nova.yaml:/etc/keystone-auth-proxy/config.yaml:ro" \
#     -e NOVA_SERVICE_PASSWORD --stop-timeout 30 -p 8774:8774 keystone-auth-proxy
# (README "Deployment": run flags, the Kubernetes manifests in deploy/kubernetes/, the local-base build.)
# The configuration is always read from /etc/keystone-auth-proxy/config.yaml: mount yours there (config/ holds
# commented examples, also copied into the image under /app/config). Without a mount the CLI exits 2.

# The base is a build argument: node:22-slim for users; a machine without a registry passes a local image with
# node, npm and a `node` user (uid 1000), as scripts/container-local.sh does in CI:
#   podman build --build-arg BASE_IMAGE=localhost/keystone-auth-proxy-base:local -t keystone-auth-proxy .
ARG BASE_IMAGE=node:22-slim

# ---- build: compile TypeScript with the dev dependencies ----
FROM ${BASE_IMAGE} AS build
WORKDIR /app
# Manifests first: the npm ci layer is reused until they change.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
RUN npm run build

# ---- runtime: production dependencies and the compiled output only ----
FROM ${BASE_IMAGE}
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
# dist/version.js reads ../package.json at start-up, so package.json stays beside dist/.
COPY --from=build /app/dist ./dist
COPY config ./config

# Files stay root-owned and read-only to the process.
USER node

# 8774: the proxied API (listen.port of the mounted config). 9180: /healthz, /readyz, /metrics, forward-auth.
# The admin listener defaults to 127.0.0.1, which only the HEALTHCHECK below can reach: set admin_listen.host
# to 0.0.0.0 in the mounted config for Prometheus or Kubernetes probes; keep that port off public networks.
EXPOSE 8774 9180

# slim has no curl: node's own fetch. Liveness only; Kubernetes should use /readyz for readiness.
# An admin listener on another port than 9180 needs -e HEALTHCHECK_URL=http://127.0.0.1:<port>/healthz.
ENV HEALTHCHECK_URL=http://127.0.0.1:9180/healthz
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["node", "-e", \
    "fetch(process.env.HEALTHCHECK_URL).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]

# SIGTERM drains in-flight requests for shutdown.grace_period_seconds (default 25): give `docker stop -t 30`
# (Docker waits 10 s by default); Kubernetes' default 30 s grace period already covers it.
STOPSIGNAL SIGTERM
CMD ["node", "dist/cli.js", "--config", "/etc/keystone-auth-proxy/config.yaml"]
