"""The demo pipeline as script invocations: the step scripts a user runs by hand, in order, with
the demo's sizes (``DemoConfig``) and the run's output layout (``DemoPaths``)."""

from __future__ import annotations

from data.synthesis_layout import OutputLayout
from pipeline.run import AOT_NAME, CLASSIFIER_NAME, GRADER_NAME, DemoConfig, DemoPaths, Step


def build_steps(config: DemoConfig, paths: DemoPaths, gpu_ids: str) -> list[Step]:
    """The pipeline as script invocations, in order (the command lines of docs/design.md, 'Pipeline',
    with the demo's sizes)."""
    p = paths
    device = ["--gpu_ids", gpu_ids]
    crop = [str(n) for n in config.crop_size]
    margin = ([] if config.classifier_vertebra_margin_mm is None
              else ["--vertebra_margin_mm", str(config.classifier_vertebra_margin_mm)])
    gan_common = ["--dataroot", str(p.dataroot), "--split_json", str(p.split_json), "--cam_dir", str(p.heatmap),
                  "--name", p.name, "--checkpoints_dir", str(p.checkpoints), "--ngf", str(config.gan_ngf),
                  "--seed", str(config.seed), "--num_threads", "0", *device]  # progress bars feed the heartbeat
    steps = [
        Step("phantoms", "data/make_phantoms.py",
             ["--out", str(p.root), "--cases", str(config.cases), "--seed", str(config.seed),
              "--vertebrae", config.vertebrae, "--workers", str(config.workers), "--no_progress"],
             f"{p.raw}/<case>/ (CT, mask, truth), {p.split_json}", (), (p.split_json,)),
        Step("centroids", "straighten/location_json_local.py", ["--root", str(p.root), "--quiet"],
             f"{p.raw}/<case>/<case>.json", (p.split_json,), (p.raw,)),
        Step("straightening", "straighten/straighten_mask_3d.py",
             ["--root", str(p.root), "--out", str(p.dataroot), "--crop_size", *crop,
              "--spacing", str(config.spacing_mm), "--workers", str(config.workers), "--quiet"],
             f"{p.dataroot}/{{CT,label}}/", (p.raw,), (p.dataroot / "label",)),
        Step("classifier", "Attention/train_classifier.py",
             ["--dataroot", str(p.dataroot), "--split_json", str(p.split_json), "--name", CLASSIFIER_NAME,
              "--checkpoints_dir", str(p.checkpoints), "--arch", "small",
              "--n_epochs", str(config.classifier_epochs), "--n_epochs_decay", str(config.classifier_epochs_decay),
              "--n_slices", str(config.classifier_slices),
              "--slices_per_vertebra", str(config.classifier_slices_per_vertebra),
              "--view_mm", str(config.classifier_view_mm), *margin,
              "--seed", str(config.seed), *device],
             f"{p.checkpoints / CLASSIFIER_NAME}/classifier.pth", (p.dataroot / "label",),
             (p.checkpoints / CLASSIFIER_NAME / "classifier.pth",)),
        Step("attention maps", "Attention/grad_CAM_3d_sagittal.py",
             ["--dataroot", str(p.dataroot), "--name", CLASSIFIER_NAME, "--checkpoints_dir", str(p.checkpoints),
              "--out", str(p.heatmap), "--n_slices", str(config.cam_slices), "--normalise", config.cam_normalise,
              "--windows", config.cam_windows, "--no_png", "--seed", str(config.seed), *device],
             f"{p.heatmap}/<key>.nii.gz", (p.checkpoints / CLASSIFIER_NAME / "classifier.pth",), (p.heatmap,)),
        Step("training", "train.py",
             [*gan_common, "--ndf", str(config.gan_ndf), "--batch_size", str(config.gan_batch_size),
              "--n_epochs", str(config.gan_epochs), "--n_epochs_decay", str(config.gan_epochs_decay),
              "--local_width", str(config.gan_local_width), "--val_freq", "0", "--no_html",
              "--save_epoch_freq", str(config.gan_epochs + config.gan_epochs_decay), "--print_freq", "4"],
             f"{p.checkpoints / p.name}/latest.pth, loss_log.csv", (p.dataroot / "label",),
             (p.checkpoints / p.name / "latest.pth",)),
        Step("synthesis", "eval_3d_sagittal_twostage.py",
             [*gan_common, "--results_dir", str(p.results.parent), "--eval"],
             f"{p.results}/{{CT_fake,label_fake}}/", (p.checkpoints / p.name / "latest.pth",),
             (OutputLayout(p.results).label_dir, OutputLayout(p.results).ct_dir)),
        Step("RHLV", "evaluation/RHLV_quantification.py",
             ["--label_dir", str(p.dataroot / "label"), "--fake_dir", str(OutputLayout(p.results).label_dir),
              "--split_json", str(p.split_json), "--out", str(p.rhlv), "--reference", "both",
              "--maps", str(p.maps), "--workers", str(config.workers)],
             f"{p.rhlv}, {p.rhlv_neighbours}, {p.maps}/", (p.dataroot / "label",), (p.rhlv, p.rhlv_neighbours)),
        Step("SVM grading", "evaluation/SVM_grading.py",
             ["--rhlv", str(p.rhlv), "--out", str(p.grading), "--n_splits", str(config.svm_folds),
              "--seed", str(config.seed)],
             f"{p.grading}/grading.json", (p.rhlv,), (p.grading / "grading.json",)),
        Step("SVM grading (neighbours)", "evaluation/SVM_grading.py",
             ["--rhlv", str(p.rhlv_neighbours), "--out", str(p.grading_neighbours),
              "--n_splits", str(config.svm_folds), "--seed", str(config.seed)],
             f"{p.grading_neighbours}/grading.json", (p.rhlv_neighbours,),
             (p.grading_neighbours / "grading.json",)),
        Step("generation metrics", "evaluation/generation_eval_sagittal.py",
             ["--dataroot", str(p.dataroot), "--fake_dir", str(p.results), "--split_json", str(p.split_json),
              "--out", str(p.generation), "--min_slice_voxels", str(config.generation_min_slice_voxels)],
             f"{p.generation}, {p.generation_summary}", (OutputLayout(p.results).ct_dir,), (p.generation_summary,)),
    ]
    return steps + comparison_steps(config, paths, gpu_ids) if config.compare else steps


def comparison_steps(config: DemoConfig, paths: DemoPaths, gpu_ids: str) -> list[Step]:
    """The paper's baselines on the same cohort, splits and folds, then the comparison table (``--compare``)."""
    p = paths
    device = ["--gpu_ids", gpu_ids]
    aot_checkpoint = p.checkpoints / AOT_NAME / "latest.pth"
    aot_common = ["--dataroot", str(p.dataroot), "--split_json", str(p.split_json), "--name", AOT_NAME,
                  "--checkpoints_dir", str(p.checkpoints), "--model", "aotgan", "--ngf", str(config.aot_ngf),
                  "--aot_blocks", str(config.aot_blocks), "--seed", str(config.seed), "--num_threads", "0",
                  "--no_progress", *device]
    folds = ["--n_splits", str(config.svm_folds), "--seed", str(config.seed)]
    aot_outputs = OutputLayout(p.aot_results)
    return [
        Step("AOT-GAN training", "train.py",
             [*aot_common, "--ndf", str(config.gan_ndf), "--batch_size", str(config.gan_batch_size),
              "--n_epochs", str(config.gan_epochs), "--n_epochs_decay", str(config.gan_epochs_decay),
              "--val_freq", "0", "--no_html", "--save_epoch_freq", str(config.gan_epochs + config.gan_epochs_decay),
              "--print_freq", "4"],
             f"{aot_checkpoint}", (p.dataroot / "label",), (aot_checkpoint,)),
        Step("AOT-GAN synthesis", "eval_3d_sagittal_twostage.py",
             [*aot_common, "--results_dir", str(p.aot_results.parent), "--eval"],
             f"{p.aot_results}/{{CT_fake,label_fake}}/", (aot_checkpoint,),
             (aot_outputs.label_dir, aot_outputs.ct_dir)),
        Step("AOT-GAN RHLV", "evaluation/RHLV_quantification.py",
             ["--label_dir", str(p.dataroot / "label"), "--fake_dir", str(aot_outputs.label_dir),
              "--split_json", str(p.split_json), "--out", str(p.aot_results / "rhlv.csv"),
              "--workers", str(config.workers)],
             f"{p.aot_results / 'rhlv.csv'}", (aot_outputs.label_dir,), (p.aot_results / "rhlv.csv",)),
        Step("AOT-GAN SVM grading", "evaluation/SVM_grading.py",
             ["--rhlv", str(p.aot_results / "rhlv.csv"), "--out", str(p.aot_results / "grading"), *folds],
             f"{p.aot_results / 'grading'}/grading.json", (p.aot_results / "rhlv.csv",),
             (p.aot_results / "grading" / "grading.json",)),
        Step("3D SupCon-SENet", "Attention/train_grader3d.py",
             ["--dataroot", str(p.dataroot), "--split_json", str(p.split_json), "--name", GRADER_NAME,
              "--checkpoints_dir", str(p.checkpoints), "--results_dir", str(p.grader_results.parent),
              "--arch", "small", "--base_width", str(config.grader_base_width),
              "--n_epochs", str(config.grader_epochs), "--n_epochs_decay", str(config.grader_epochs_decay),
              "--batch_size", str(config.grader_batch_size), "--n_splits", str(config.svm_folds),
              "--grading_seed", str(config.seed), "--seed", str(config.seed), *device],
             f"{p.grader_results}/predictions.csv, grading/grading.json", (p.dataroot / "label",),
             (p.grader_results / "grading" / "grading.json",)),
        Step("comparison table", "evaluation/compare_methods.py",
             ["--out", str(p.comparison), "--results_dir", str(p.comparison.parent),
              "--cohort", f"phantom, {config.cases} cases ({config.vertebrae})"],
             f"{p.comparison}/comparison.{{md,csv,png}}", (), (p.comparison / "comparison.csv",)),
    ]
