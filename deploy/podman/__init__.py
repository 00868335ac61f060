"""Build and run the draftlink images with podman (offline build, compose, kube play adapter)."""
