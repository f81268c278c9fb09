"""`python -m stages.patchcore`: the patchcore head's command (pipeline/commands/patchcore.py)."""
from pipeline.commands.patchcore import main

if __name__ == "__main__":
    main()
