"""Framework-free code shared by every worker (and readable by the orchestrator)."""
