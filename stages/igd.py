"""`python -m stages.igd`: the igd head's command (pipeline/commands/igd.py)."""
from pipeline.commands.igd import main

if __name__ == "__main__":
    main()
