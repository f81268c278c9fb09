"""`python -m stages.anomem`: the anomem head's command (pipeline/heads/anomem/command.py)."""
from pipeline.heads.anomem.command import main

if __name__ == "__main__":
    main()
