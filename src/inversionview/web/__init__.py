"""The live web UI: a JSON API (FastAPI, pydantic schemas) and a single page served with it."""
