"""`python -m stages.classical`: the classical detectors' command (pipeline/commands/classical.py)."""
from pipeline.commands.classical import main

if __name__ == "__main__":
    main()
