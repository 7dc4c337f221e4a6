"""`make bench`: how close mlbench's figures are to hand-written loops, and what the orchestrator costs."""
