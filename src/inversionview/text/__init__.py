"""Text as the probed model sees it: tokenizers, input sources and positions over tokens.

The toy tasks use a character vocabulary (``tasks.base.Vocabulary``); a language model uses
its own HuggingFace tokenizer read from its directory (``HFTokenizer``). Both give the same
interface to the later stages: ``size``, ``bos_id``/``eos_id``/``pad_id``, ``tokens``,
``id_of``, ``encode``, ``decode`` and ``token_strings``.
"""
