"""Renderings of a query result: terminal table, HTML page."""
