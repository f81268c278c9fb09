"""`python -m stages.knn`: the knn head's command (pipeline/heads/knn/command.py)."""
from pipeline.heads.knn.command import main

if __name__ == "__main__":
    main()
