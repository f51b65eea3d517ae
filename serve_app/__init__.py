"""The Ray Serve app: `serve run configs/serve.yaml` (or `serve run serve_app.app:build_app`)."""
