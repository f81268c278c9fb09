"""`python -m stages.plume`: the plume head's command (pipeline/commands/plume.py)."""
from pipeline.commands.plume import main

if __name__ == "__main__":
    main()
