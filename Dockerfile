# The tunnel container image: the static release binary on distroless
# static (CA certificates, /etc/passwd with nonroot, no shell, no libc),
# run as nonroot (65532). Build the binary first, then the image:
#
#   make dist-bin TARGET_OS=linux TARGET_ARCH=amd64   # or: make release
#   docker build --build-arg TARGETARCH=amd64 -t tunnel:VERSION .   # make image
#
# (docker buildx sets TARGETARCH itself.) CI, which has no container engine,
# checks that the file copied below is static, trimmed and version-stamped:
# make check-static. See examples/kubernetes/tunnel-server.yaml.
FROM gcr.io/distroless/static-debian12:nonroot

ARG TARGETARCH=amd64
COPY dist/tunnel-linux-${TARGETARCH} /usr/bin/tunnel

USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/bin/tunnel"]
CMD ["--help"]
