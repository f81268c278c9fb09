"""`python -m stages.ensemble`: the ensemble head's command (pipeline/commands/ensemble.py)."""
from pipeline.commands.ensemble import main

if __name__ == "__main__":
    main()
