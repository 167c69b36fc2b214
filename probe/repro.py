"""``python -m probe.repro``: kept for existing command lines; the pipelines live in ``repro/``.

It runs ``python -m repro table3`` with the same options (``--ablation``, ``--finetune``, ``--methods``,
``--images``, ``--cifar``, ``--work``, ``--out`` ...). Nothing imports this module: the library never
imports ``repro``, so the forwarding happens only when it runs as a program.
"""
if __name__ == "__main__":
    import runpy
    import sys

    sys.argv[1:1] = ["table3"]
    runpy.run_module("repro", run_name="__main__", alter_sys=True)
