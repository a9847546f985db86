"""Terminology: the CodeSystems and ValueSets under ``terminology/`` and the operations on them
(``$lookup``, ``$validate-code``, ``$expand``), over built-in and stored terminology alike."""

from server.terminology.library import builtin_resources

__all__ = ["builtin_resources"]
