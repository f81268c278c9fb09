"""`python -m stages.gaussian`: the gaussian head's command (pipeline/commands/gaussian.py)."""
from pipeline.commands.gaussian import main

if __name__ == "__main__":
    main()
