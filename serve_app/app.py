"""Builds the Serve application graph.

    serve run configs/serve.yaml                                    # the config names build_app
    serve run serve_app.app:build_app config=configs/rag.yaml retrieval.mode=dense

Arguments: `config` (settings YAML) and any settings key, dotted for nested ones; values are
parsed as YAML scalars. Settings are resolved once here, on the driver, and handed to every
replica, so all replicas (on any node) use exactly the same values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ray.serve import Application

from rag_core.settings import RAGSettings, load_settings
from serve_app.auth import Authenticator
from serve_app.deployments import (
    EmbedderDeployment,
    GeneratorDeployment,
    Ingress,
    RerankerDeployment,
    RetrieverDeployment,
    serve_http_host,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def resolve_config_path(config: str | None) -> str | None:
    """A relative config path is tried in the working directory, then in the project root
    (the app may be built by a Serve task whose working directory is not the repo)."""
    if not config or Path(config).is_absolute() or Path(config).exists():
        return config
    candidate = PROJECT_ROOT / config
    return str(candidate) if candidate.exists() else config


def settings_from_args(args: dict[str, Any] | None) -> RAGSettings:
    args = dict(args or {})
    config = resolve_config_path(args.pop("config", None))
    overrides: dict[str, Any] = {}
    for key, value in args.items():
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip() else None
        target = overrides
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return load_settings(config, **overrides)


def build_graph(settings: RAGSettings, deployment_options: dict[str, dict[str, Any]] | None = None) -> Application:
    """The graph; `deployment_options` overrides Serve options by deployment name (as serve.yaml does)."""
    options = deployment_options or {}

    def configured(deployment: Any) -> Any:
        return deployment.options(**options[deployment.name]) if deployment.name in options else deployment

    return configured(Ingress).bind(
        configured(EmbedderDeployment).bind(settings),
        configured(RetrieverDeployment).bind(settings),
        configured(RerankerDeployment).bind(settings),
        configured(GeneratorDeployment).bind(settings),
        settings,
    )


def build_app(args: dict[str, Any] | None = None) -> Application:
    settings = settings_from_args(args)
    # Fail the deployment at once, with the reason, rather than in every Ingress replica's start.
    Authenticator(settings.auth).check_exposure(serve_http_host(settings))
    return build_graph(settings)
