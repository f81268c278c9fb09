"""Entry point kept for ``python -m pipeline.cache ...``; the feature store lives in pipeline/store/."""

from pipeline.store.command import main

if __name__ == "__main__":
    main()
