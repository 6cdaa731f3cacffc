def __getattr__(name: str):
    """``blockqnn.load`` without importing torch at ``import blockqnn`` (the CLIs stay quick to start)."""
    if name == "load":
        from blockqnn.export import load

        return load
    raise AttributeError(f"module 'blockqnn' has no attribute {name!r}")
