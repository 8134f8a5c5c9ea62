"""The iterative model loop (`sandbox ask`): a model writes Python, the sandbox runs it, the model
reads the result, until it answers. See `loop` for the rules and `backends` for the models."""

from .backends import GeminiBackend, OpenAIChatBackend
from .loop import (DEFAULT_MAX_REGENERATIONS, DEFAULT_TIMEOUT, Agent, Backend, Prompt, Reply, Step, Transcript,
                   tool_description)

__all__ = ["Agent", "Backend", "Prompt", "Reply", "Step", "Transcript", "OpenAIChatBackend", "GeminiBackend",
           "tool_description", "DEFAULT_TIMEOUT", "DEFAULT_MAX_REGENERATIONS"]
