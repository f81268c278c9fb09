"""`python -m stages.gaussian`: the gaussian head's command (pipeline/heads/gaussian/command.py)."""
from pipeline.heads.gaussian.command import main

if __name__ == "__main__":
    main()
