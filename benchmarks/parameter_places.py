"""How many places each PLUME parameter is written in a checkout: a dataclass field with a
default, a click option of params.yaml's plume section, a word in a report SETTINGS table, and
params.yaml's key. Presets (named configurations) are counted too where they spell a key.

    python benchmarks/parameter_places.py .            # this checkout
    python benchmarks/parameter_places.py /tmp/base    # a worktree of an earlier commit
"""
import re, sys
from pathlib import Path
root = Path(sys.argv[1])
names = ["perturbation","guidance","guidance_form","lam","nu","gamma","tau","epochs","min_steps","batch_size","lr",
         "weight_decay","dim","identity_loss","identity_target","batch_mode","noise_std","max_shift","select",
         "val_fraction","ema","seeds","device","threshold_quantile","classes"]
files = [p for p in (root / "pipeline").rglob("*.py") if "plume" in str(p) or p.name in ("stage.py",)] 
yaml_text = (root / "params.yaml").read_text()
plume_yaml = yaml_text.split("\nplume:\n")[1].split("\n\n")[0]
total = {}
for n in names:
    places = 0
    for p in files:
        t = p.read_text()
        places += len(re.findall(rf"^\s+{n}: [^=\n]*=\s*(?![\s]|None)", t, re.M))  # a field or argument with a default
        places += len(re.findall(rf'params\.option\("plume", "{n}"', t))          # click option
        places += len(re.findall(rf'^\s*"{n}": ', t, re.M)) if "SETTINGS" in t else 0  # report words
        places += len(re.findall(rf'"{n}": ("|lambda)', t)) if "SETTINGS" not in t else 0
    places += len(re.findall(rf"^  {n}:", plume_yaml, re.M))                     # params.yaml
    total[n] = places
print(total)
print("mean", sum(total.values()) / len(total))
