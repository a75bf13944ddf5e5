"""The factual-recall case study (issue 16): facts that install offline, prompts, readers."""
