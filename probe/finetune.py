"""``python -m probe.finetune``: kept for existing command lines; the pipeline lives in ``repro/table45.py``.

It runs ``python -m repro table45`` with the same options. Nothing imports this module: the library never
imports ``repro``, so the forwarding happens only when it runs as a program.
"""
if __name__ == "__main__":
    import runpy
    import sys

    sys.argv[1:1] = ["table45"]
    runpy.run_module("repro", run_name="__main__", alter_sys=True)
