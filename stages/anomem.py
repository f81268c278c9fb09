"""`python -m stages.anomem`: the anomem head's command (pipeline/commands/anomem.py)."""
from pipeline.commands.anomem import main

if __name__ == "__main__":
    main()
