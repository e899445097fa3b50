"""Recipe -> stages -> doit: compiling (`compile`), running (`runner`, `pipeline`), planning (`plan`).

The stage kinds themselves, and what each reads, are in `engine.stages.table`; the run
directory's layout is `engine.rundir`.
"""

from .compile import Stage, compile_stages, downstream, upstream
from .pipeline import GraphError, Pipeline
from .runner import RunReport

__all__ = ["GraphError", "Pipeline", "RunReport", "Stage", "compile_stages", "downstream", "upstream"]
