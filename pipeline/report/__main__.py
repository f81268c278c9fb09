"""``python -m pipeline.report``: see command.py."""

from pipeline.report.command import main

if __name__ == "__main__":
    main()
