"""Reading what sites encode at scale: per-site summaries and the optional LLM reading."""
