"""`python -m stages.plume_ablation`: PLUME's ablation command (pipeline/commands/plume_ablation.py)."""
from pipeline.commands.plume_ablation import main

if __name__ == "__main__":
    main()
