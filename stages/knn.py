"""`python -m stages.knn`: the knn head's command (pipeline/commands/knn.py)."""
from pipeline.commands.knn import main

if __name__ == "__main__":
    main()
