"""``python -m pipeline.extract ...``: the extract command of command.py."""

from pipeline.extract.command import main

if __name__ == "__main__":
    main()
