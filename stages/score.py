"""`python -m stages.score`: score new images with a saved head (pipeline/scoring.py)."""
from pipeline.scoring import main

if __name__ == "__main__":
    main()
