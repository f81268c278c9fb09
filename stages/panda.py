"""`python -m stages.panda`: the panda head's command (pipeline/commands/panda.py)."""
from pipeline.commands.panda import main

if __name__ == "__main__":
    main()
