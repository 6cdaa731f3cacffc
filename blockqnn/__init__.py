"""BlockQNN: block-wise neural architecture search. ``blockqnn.load(path)`` loads an exported model;
``blockqnn.history(path)`` reads runs and sweeps as a pandas DataFrame (``blockqnn.frames``)."""

__all__ = ["history", "load"]


def __getattr__(name: str):
    """``blockqnn.load`` and ``blockqnn.history`` without importing torch or pandas at ``import blockqnn`` (the
    CLIs stay quick to start)."""
    if name == "load":
        from blockqnn.export import load

        return load
    if name == "history":
        from blockqnn.frames import history

        return history
    raise AttributeError(f"module 'blockqnn' has no attribute {name!r}")
