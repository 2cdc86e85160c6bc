"""Evaluation (being written)."""


def register(app):
    return None
