"""Typed errors raised to users (bad config, bad model name, bad data).

Failures *inside* a rollout are not exceptions but data on the trajectory
(see :class:`agentrft.types.ToolError`, :class:`agentrft.types.TrajectoryError`);
the exceptions here are for things the user must fix before a run can start.
"""


class AgentRFTError(Exception):
    """Base class for every error agentrft raises on purpose."""


class ConfigError(AgentRFTError):
    """A config file or option is malformed or contradictory."""


class ModelNotFoundError(AgentRFTError):
    """A model name or path does not resolve to a usable model."""


class DatasetError(AgentRFTError):
    """A dataset file is unusable (strict mode, or no valid rows at all)."""


class ToolDefinitionError(AgentRFTError):
    """A tool function or environment cannot be turned into a tool schema."""


class GraderSpecError(AgentRFTError):
    """A grader spec is malformed."""
