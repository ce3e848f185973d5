"""Serving: the HTTP service (``recforge-serve``), batch top-K (``recforge-recommend``), request-log
monitoring (``recforge-monitor``) and the MLflow Model Registry helpers. FastAPI, uvicorn and MLflow are
imported by the modules that need them, not here."""
