"""The web page at `/`: plain HTML, CSS and JavaScript served by the Ingress itself (no build
step, no CDN), on top of the public API only: chat completions, documents, index status, health."""
