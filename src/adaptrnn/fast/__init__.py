"""Execution paths that turn counted savings into saved time; each is tested to give the
outputs of the reference implementation in ``adaptrnn.methods``."""
