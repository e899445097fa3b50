"""Stages: the one stage table, the contract a stage function is held to, one module per kind.

`table` lists every stage kind and what it needs and reads; `contract` is what a stage function
receives and returns; `view` is the read-only recipe it sees. The modules named after a kind
(`data`, `train`, ... `check`) are the stages themselves, imported only when one executes.
"""

from .contract import StageContext, StageFailed, StageResult
from .table import BY_KIND, KINDS, StageKind, register, resolve, unregister
from .view import UndeclaredRead

__all__ = ["BY_KIND", "KINDS", "StageContext", "StageFailed", "StageKind", "StageResult",
           "UndeclaredRead", "register", "resolve", "unregister"]
