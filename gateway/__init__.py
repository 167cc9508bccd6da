"""An OpenAI-compatible LLM API gateway and cost proxy (Mistral La Plateforme, vLLM)."""

__version__ = "0.1.0"
