"""The per-node daemon (``modeldist agent``): executes its part of broadcast plans, serves children,
talks to the scheduler, and lets local processes map models from its store (``daemon.py``,
``job.py``)."""

from .daemon import Agent, ask_local_agent, local_socket_path
from .job import Job, ParentRef

__all__ = ["Agent", "Job", "ParentRef", "ask_local_agent", "local_socket_path"]
