"""Operator and user commands. Each module is runnable (`python scripts/NAME.py --help`) and has a
console entry point (`llm-mesh-NAME`)."""
