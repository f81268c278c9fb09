"""`python -m stages.plume`: the plume head's command (pipeline/heads/plume/command.py)."""
from pipeline.heads.plume.command import main

if __name__ == "__main__":
    main()
