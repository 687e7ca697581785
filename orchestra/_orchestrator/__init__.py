"""The orchestrator daemon: leader lease and one module per maintenance service."""

from orchestra._orchestrator._orchestrator import Orchestrator

__all__ = ["Orchestrator"]
