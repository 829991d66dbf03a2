"""(docs/results/phantom/self_training.json is made from the lines this writes to results.jsonl.)
Issue 14 on the phantom's test split: for each seed the full demo recipe (self-training: mean teacher), then the
paper's self-training from the same joint model, scored once on the test set."""
import json, shutil, sys
from pathlib import Path
from wsbus.experiments import PHANTOM, run_experiment

for seed in [int(s) for s in sys.argv[1].split(",")]:
    mt_out = Path(f"runs/phantom_self_training/mt/seed_{seed}")
    mt = run_experiment("phantom", mt_out, recipe=PHANTOM, seed=seed, progress=False, verbose=False)
    paper_out = Path(f"runs/phantom_self_training/paper/seed_{seed}")
    for m in ("strong_full", "strong_few", "weak_only", "joint"):
        src, dst = mt_out / "runs" / m, paper_out / "runs" / m
        if not dst.exists():
            shutil.copytree(src, dst)
    paper = run_experiment("phantom", paper_out, recipe=PHANTOM.replace(self_training="paper"), seed=seed,
                           progress=False, verbose=False)
    row = {"seed": seed}
    for name, res in (("mean_teacher", mt), ("paper", paper)):
        by = {m["name"]: m for m in res["methods"]}
        row[name] = {"joint_self_training": by["joint_self_training"]["corloc"],
                     "p_vs_joint": by["joint_self_training"]["p_value"],
                     "precision": (res["pseudo_box_precision"] or {}).get("overall"),
                     "class_accuracy": res["self_training_class_accuracy"]}
    row["joint"] = {m["name"]: m["corloc"]["overall"] for m in mt["methods"]}
    print(json.dumps(row), flush=True)
    with open("runs/phantom_self_training/results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")

# docs/results/phantom/self_training.json from the lines above and each seed's results.json
rows = [json.loads(line) for line in open("runs/phantom_self_training/results.jsonl")]
per = []
for r in rows:
    joint = {m["name"]: m for m in json.loads(Path(f"runs/phantom_self_training/mt/seed_{r['seed']}/results.json")
                                               .read_text())["methods"]}["joint"]["corloc"]
    row = {"seed": r["seed"], "joint": r["joint"]["joint"],
           "joint_by_class": {k: joint[k] for k in ("benign", "malignant")}, "strong_full": r["joint"]["strong_full"], "strong_few": r["joint"]["strong_few"]}
    for name in ("paper", "mean_teacher"):
        c = r[name]["joint_self_training"]
        row.update({name: c["overall"], f"{name}_by_class": {k: c[k] for k in ("benign", "malignant")},
                    f"{name}_p_vs_joint": r[name]["p_vs_joint"], f"{name}_precision": r[name]["precision"],
                    f"{name}_class_accuracy": r[name]["class_accuracy"]})
    per.append(row)
mean = {k: sum(p[k] for p in per) / len(per) for k in ("joint", "paper", "mean_teacher", "strong_full", "strong_few")}
out = Path("docs/results/phantom/self_training.json")
old = json.loads(out.read_text()) if out.is_file() else {}
out.write_text(json.dumps({**{k: old[k] for k in ("about", "command", "machine") if k in old}, "per_seed": per,
                           "mean": mean}, indent=1))
