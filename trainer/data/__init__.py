"""Dataset readers (one per on-disk format), the MMRec split and feature builders."""
