"""One thin command per head; the work is done by ``pipeline``."""
