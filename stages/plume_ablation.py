"""`python -m stages.plume_ablation`: PLUME's ablation command (pipeline/heads/plume/ablation.py)."""
from pipeline.heads.plume.ablation import main

if __name__ == "__main__":
    main()
