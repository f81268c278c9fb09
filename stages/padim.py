"""`python -m stages.padim`: the padim head's command (pipeline/commands/padim.py)."""
from pipeline.commands.padim import main

if __name__ == "__main__":
    main()
