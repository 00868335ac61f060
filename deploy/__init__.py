"""Deployment assets (Docker, compose, Kubernetes, Prometheus, Grafana) and their helper tools."""
