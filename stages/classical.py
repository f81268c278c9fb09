"""`python -m stages.classical`: the classical detectors' command (pipeline/heads/classical/command.py)."""
from pipeline.heads.classical.command import main

if __name__ == "__main__":
    main()
