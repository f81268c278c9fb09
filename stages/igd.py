"""`python -m stages.igd`: the igd head's command (pipeline/heads/igd/command.py)."""
from pipeline.heads.igd.command import main

if __name__ == "__main__":
    main()
