"""The whole embedviz system on one machine (`python -m services.stack`, `make run`)."""

from services.stack.stack import ALL, INFRA, SERVICES, Stack, StackError, parse_components

__all__ = ["ALL", "INFRA", "SERVICES", "Stack", "StackError", "parse_components"]
