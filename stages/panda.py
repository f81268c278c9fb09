"""`python -m stages.panda`: the panda head's command (pipeline/heads/panda/command.py)."""
from pipeline.heads.panda.command import main

if __name__ == "__main__":
    main()
