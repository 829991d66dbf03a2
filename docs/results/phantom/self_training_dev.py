"""Issue 14 development on the phantom: self-training variants from one joint model per seed, scored on a
validation split held out from the training patients (never the test set)."""
import json, sys, time, copy
import torch
from wsbus.experiments import PHANTOM, prepare_data, Experiment
from wsbus.checkpoint import load_checkpoint
from wsbus.self_training import self_train, MeanTeacherSettings
from wsbus.seeding import cpu_threads

seed = int(sys.argv[1]); variants = sys.argv[2].split(",")
recipe = PHANTOM.replace(n_val=60)
VARIANTS = {
    "paper": dict(procedure="paper"),
    "paper_r2": dict(procedure="paper", rounds=2),
    "mt": dict(procedure="mean_teacher", mt=dict(decay=0.995, score_thresh=0.7)),
    "mt_mil": dict(procedure="mean_teacher", mt=dict(decay=0.995, score_thresh=0.7, keep_mil=True)),
    "mt_ign": dict(procedure="mean_teacher", mt=dict(decay=0.995, score_thresh=0.7, ignore_iou=0.1)),
    "mt_w": dict(procedure="mean_teacher", mt=dict(decay=0.995, score_thresh=0.7, weight_by_score=True)),
    "mt_aug": dict(procedure="mean_teacher", mt=dict(decay=0.995, score_thresh=0.7, augment=True)),
    "mt_all": dict(procedure="mean_teacher", mt=dict(decay=0.995, score_thresh=0.7, keep_mil=True, ignore_iou=0.1,
                                                     weight_by_score=True, augment=True)),
    "mt_d999": dict(procedure="mean_teacher", mt=dict(decay=0.999, score_thresh=0.7)),
    "mt_t5": dict(procedure="mean_teacher", mt=dict(decay=0.995, score_thresh=0.5)),
    "mt_student": dict(procedure="mean_teacher", mt=dict(decay=0.995, score_thresh=0.7, evaluate="student")),
}
with cpu_threads(1):
    data = prepare_data("phantom", recipe, seed)
    out = f"runs/st/seed{seed}"
    exp = Experiment(data, recipe, out, seed=seed, methods=("strong_few", "joint"), evaluate_on="val", progress=False)
    base = exp.run()
    vals = {m["name"]: m["corloc"]["overall"] for m in base["methods"]}
    for v in variants:
        spec = VARIANTS[v]
        joint = exp.build_model()
        joint.load_state_dict(load_checkpoint(exp.run_dir("joint") / "last.pt")["model"])
        t0 = time.time()
        st = self_train(data.strong, data.weak, data.val, model_factory=exp.build_model, initial=joint,
                        procedure=spec["procedure"], fractions=(0.5,), steps=recipe.steps, retrain="scratch",
                        rounds=spec.get("rounds", 1), per_class=True,
                        mean_teacher=MeanTeacherSettings(**spec.get("mt", {})), seed=exp.train_seed,
                        init_seed=exp.init_seed, n_boot=200, progress=False,
                        trainer_kwargs=dict(recipe.trainer_options(), alpha=recipe.alpha_schedule(recipe.steps),
                                            mixing="combined"))
        js = st.to_json()
        final = st.methods[-1]
        rec = dict(seed=seed, variant=v, joint=vals["joint"], strong_few=vals["strong_few"], final=final.overall,
                   benign=final.benign, malignant=final.malignant, all_rows={m.name: m.overall for m in st.methods},
                   precision=js["pseudo_box_precision"]["overall"] if js["pseudo_box_precision"] else None,
                   class_accuracy=js["class_accuracy"], teacher=js["teacher"], seconds=time.time() - t0)
        print(json.dumps(rec), flush=True)
        with open("runs/st/results.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
