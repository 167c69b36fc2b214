"""The paper's reproduction, as torchvision's ``references/``: plans of steps through the project's commands.

``python -m repro table3|table1|table45|all`` renders, trains, probes and writes a results page under
``docs/results/``. Each table module turns a config into a plan of ``Step``s (``repro.steps``) and the
finished steps' records into rows (data); ``repro.report`` renders pages and plots from rows. Nothing in
``augment``, ``train`` or ``probe`` imports this package.
"""
