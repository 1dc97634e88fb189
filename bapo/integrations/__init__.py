"""BAPO's loss inside other RL frameworks: :mod:`~bapo.integrations.trl` and :mod:`~.verl`.

Each module imports its framework lazily, so importing it never requires the framework.
"""
