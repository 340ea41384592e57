"""Dataset readers (one per on-disk format), the MMRec split and feature builders."""


def __getattr__(name: str):
    # Lazy so that importing trainer.data.dataset does not pull in every reader.
    if name in ("load_dataset", "detect_format"):
        from trainer.data import loaders

        return getattr(loaders, name)
    raise AttributeError(f"module 'trainer.data' has no attribute {name!r}")
